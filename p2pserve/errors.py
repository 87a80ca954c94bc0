"""The one exception tree of p2pserve.

Every error p2pserve raises is a :class:`P2PServeError`. Foreign exceptions (libp2p,
msgpack, nacl, httpx, sqlite3) are translated at the adapter that meets them and chained
with ``raise ... from exc``; they never leak past it::

    P2PServeError
    ├── ConfigError                 a config file or value is invalid (names file, key, reason)
    ├── IdentityError               a key file is missing, malformed or readable by others
    ├── ProtocolError               a message broke the wire rules
    │   ├── LocalProtocolError      we were about to send something invalid (a bug or bad input)
    │   └── RemoteProtocolError     a peer sent something invalid; the stream is closed
    │       ├── FrameTooLarge       a length prefix above the named limit
    │       ├── MalformedMessage    undecodable bytes, unknown tag, wrong field types/count
    │       └── BadSignature        a signature that does not verify for the claimed signer
    ├── TransportError              the network failed us
    │   ├── DialError               could not connect to an address or peer
    │   ├── ConnectionBroken        the peer vanished or reset the stream mid-exchange
    │   ├── StreamClosed            we already closed this stream / transport
    │   └── PeerTimeout             a peer did not answer within a deadline
    ├── BackendError                an LLM backend failed
    │   ├── BackendUnavailable      connection refused / reset / DNS
    │   ├── BackendTimeout          no answer within the configured timeout
    │   └── BackendResponseError    a non-2xx answer or an answer we cannot parse
    ├── ServingError                a user request could not be served
    │   ├── UnknownModel            no node in reach serves this model (HTTP 404)
    │   ├── BadRequest              the request body is invalid (HTTP 400)
    │   │   └── RequestTooLarge     the request body exceeds max_prompt (HTTP 413)
    │   ├── NoCapacity              nobody can take it now (HTTP 503)
    │   │   └── AccountNotOpen      this node cannot pay peers yet: its ledger account opens soon (HTTP 503)
    │   ├── InsufficientCredit      the request's worst-case price exceeds this node's credit (HTTP 402)
    │   └── RequestFailed           it started but could not finish (stream error event)
    └── LedgerError                 ledger rule violations and store failures
        ├── InvalidBlock            a block breaks a rule (``reason`` says which)
        └── StoreError              the SQLite store failed or is corrupt

Adapters translate with :class:`map_exceptions` (httpcore's ``map_exceptions``, as a class)::

    with map_exceptions({httpx.TimeoutException: BackendTimeout, httpx.NetworkError: BackendUnavailable}):
        response = await client.send(request)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType

__all__ = [
    "AccountNotOpen",
    "BackendError",
    "BackendResponseError",
    "BackendTimeout",
    "BackendUnavailable",
    "BadRequest",
    "BadSignature",
    "ConfigError",
    "ConnectionBroken",
    "DialError",
    "FrameTooLarge",
    "IdentityError",
    "InsufficientCredit",
    "InvalidBlock",
    "LedgerError",
    "LocalProtocolError",
    "MalformedMessage",
    "NoCapacity",
    "P2PServeError",
    "PeerTimeout",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestFailed",
    "RequestTooLarge",
    "ServingError",
    "StoreError",
    "StreamClosed",
    "TransportError",
    "UnknownModel",
    "map_exceptions",
]


class P2PServeError(Exception):
    """Base of every error p2pserve raises on purpose."""


class ConfigError(P2PServeError):
    """A config file or value is invalid. The message names the file, the key and the reason."""


class IdentityError(P2PServeError):
    """A key file is missing, malformed, or readable by users other than its owner."""


class ProtocolError(P2PServeError):
    """A message broke the wire rules."""


class LocalProtocolError(ProtocolError):
    """We were about to send an invalid message (a bug, or bad input from our own user)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent an invalid message. The stream it came on is closed; the node lives on."""


class FrameTooLarge(RemoteProtocolError):
    """A frame's length prefix exceeds the configured limit."""


class MalformedMessage(RemoteProtocolError):
    """Bytes that do not decode to a valid message: bad msgpack, unknown tag, wrong fields."""


class BadSignature(RemoteProtocolError):
    """A signature does not verify for the key it claims to come from."""


class TransportError(P2PServeError):
    """The network failed us."""


class DialError(TransportError):
    """Could not connect to an address or a peer."""


class ConnectionBroken(TransportError):
    """The peer vanished or reset the stream in the middle of an exchange."""


class StreamClosed(TransportError):
    """The stream or transport was already closed by us."""


class PeerTimeout(TransportError):
    """A peer did not answer within its deadline."""


class BackendError(P2PServeError):
    """An LLM backend failed."""


class BackendUnavailable(BackendError):
    """The backend could not be reached (connection refused, reset, name resolution)."""


class BackendTimeout(BackendError):
    """The backend did not answer within the configured timeout."""


class BackendResponseError(BackendError):
    """The backend answered with an error status or with a body we cannot parse."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServingError(P2PServeError):
    """A user request could not be served. ``status_code`` is the HTTP status to answer with;
    ``retry_after_s``, when set, how long a client should wait before retrying (the API's
    ``Retry-After`` header)."""

    status_code = 500
    error_type = "server_error"
    retry_after_s: int | None = None


class UnknownModel(ServingError):
    """No node in reach serves the requested model."""

    status_code = 404
    error_type = "model_not_found"


class BadRequest(ServingError):
    """The request body is invalid."""

    status_code = 400
    error_type = "invalid_request_error"


class RequestTooLarge(BadRequest):
    """The request body exceeds the ``max_prompt`` limit."""

    status_code = 413
    error_type = "request_too_large"


class NoCapacity(ServingError):
    """Nobody (local or remote) could take the request now."""

    status_code = 503
    error_type = "no_capacity"


class AccountNotOpen(NoCapacity):
    """A request that needs credit arrived before this node's ledger account was opened (a
    new node's opens once a peer has confirmed its chain, seconds after it joins): worth
    retrying after ``retry_after_s`` seconds, unlike :class:`InsufficientCredit`."""

    error_type = "account_not_open"
    retry_after_s: int | None = 5


class InsufficientCredit(ServingError):
    """Every peer serving the model would cost more, at worst, than this node can pay now."""

    status_code = 402
    error_type = "insufficient_credit"


class RequestFailed(ServingError):
    """The request started but could not be finished (e.g. its executor died mid-stream)."""

    status_code = 502
    error_type = "request_failed"


class LedgerError(P2PServeError):
    """Ledger rule violations and store failures."""


class InvalidBlock(LedgerError):
    """A block breaks a ledger rule. ``reason`` is a short stable code, e.g. ``"bad-signature"``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StoreError(LedgerError):
    """The ledger store failed or holds corrupt data."""


class map_exceptions:  # noqa: N801 - used like contextlib.suppress
    """Translate foreign exceptions at an adapter's edge, chained with ``raise ... from exc``.

    ``mapping`` maps a foreign exception type to the p2pserve exception to raise instead:
    an exception class (called with the original, so the message is ``str(original)``) or
    a function from the original to the new exception (to write a message of its own). The
    first entry the raised exception is an instance of wins, in the mapping's order, so list
    subclasses before their bases. Anything unlisted passes unchanged, and so does every
    ``BaseException`` that is not an ``Exception`` (``trio.Cancelled``, ``KeyboardInterrupt``).
    A plain class, not a generator: entering costs a method call, and one instance may be
    reused.
    """

    __slots__ = ("_mapping",)

    def __init__(self, mapping: Mapping[type[Exception], Callable[[Exception], P2PServeError]]) -> None:
        self._mapping = tuple(mapping.items())

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not isinstance(exc, Exception):
            return
        for foreign, translate in self._mapping:
            if isinstance(exc, foreign):
                raise translate(exc) from exc
