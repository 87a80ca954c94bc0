"""Wire messages for gossip (tags 1-9) and inference forwarding (tags 10-29).

Credit amounts are integers in micro-credits (1 credit = 1_000_000). Times on the wire are
integer milliseconds of the sender's wall clock (``*_ms``); they are only ever compared
with generous tolerances. Ledger (30-49) and duel (50-69) messages live with their owners.
"""

from __future__ import annotations

from p2pserve.crypto import sha256
from p2pserve.errors import MalformedMessage
from p2pserve.wire.codec import Message, SignedMessage, message
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = [
    "MAX_STATUS_INTERVAL_MS",
    "REQUEST_ID_SIZE",
    "Accept",
    "Cancel",
    "Chunk",
    "Done",
    "Failure",
    "InferRequest",
    "ModelStatus",
    "Receipt",
    "Reject",
    "RequestHeader",
    "Status",
]

REQUEST_ID_SIZE = 16
MAX_STATUS_INTERVAL_MS = 120_000
"""A peer may not declare a slower gossip than this (it would stay listed long after leaving)."""
_KINDS = ("chat", "completion")


def _short(name: str, value: str, limit: int = 256) -> None:
    if len(value) > limit:
        raise MalformedMessage(f"{name} longer than {limit} characters")


def _non_negative(name: str, value: int) -> None:
    if value < 0:
        raise MalformedMessage(f"{name} must be >= 0")


# --- gossip -------------------------------------------------------------------------------


@message(2)
class ModelStatus(Message):
    """One model a node serves, with its current load."""

    name: str
    context_length: int
    price_per_1k: int
    """Price in micro-credits per 1000 output tokens."""
    running: int
    queued: int
    token_usage: float | None
    """KV-cache usage 0..1, or None when the backend does not say (unknown is never idle)."""
    accepting: bool

    def _check(self) -> None:
        _short("model name", self.name)
        for n in ("context_length", "price_per_1k", "running", "queued"):
            _non_negative(n, getattr(self, n))
        if self.token_usage is not None and not 0.0 <= self.token_usage <= 1.5:
            raise MalformedMessage("token_usage out of range")


@message(1)
class Status(SignedMessage):
    """A node's signed self-description, gossiped every ``status_interval`` seconds."""

    network_id: str
    peer_id: str
    seq: int
    """Strictly increasing per node run-and-restart (starts at the wall clock in ms)."""
    timestamp_ms: int
    addrs: tuple[str, ...]
    models: tuple[ModelStatus, ...]
    accepting: bool
    running: int
    queued: int
    stake: int
    """Staked micro-credits the node claims (routing checks it against the ledger when known)."""
    ledger_head: bytes
    interval_ms: int
    """How often this node gossips its status now; receivers expire it after a few of these."""
    signature: bytes

    SIGNER = "peer_id"

    def _check(self) -> None:
        _short("network_id", self.network_id, 64)
        lim = DEFAULT_LIMITS.max_peers_per_status
        if len(self.addrs) > lim or len(self.models) > lim:
            raise MalformedMessage(f"status lists more than {lim} addresses or models")
        for a in self.addrs:
            _short("address", a)
        for n in ("seq", "timestamp_ms", "running", "queued", "stake"):
            _non_negative(n, getattr(self, n))
        if not 0 < self.interval_ms <= MAX_STATUS_INTERVAL_MS:
            raise MalformedMessage(f"interval_ms must be within (0, {MAX_STATUS_INTERVAL_MS}]")
        if len(self.ledger_head) > 64:
            raise MalformedMessage("ledger_head longer than 64 bytes")


# --- inference forwarding (/p2pserve/infer/1) ------------------------------------------------


@message(10)
class InferRequest(SignedMessage):
    """A request offered to an executor, signed by the requester.

    ``request_id`` is fresh random bytes; executors refuse an ID they have seen and a
    ``created_ms`` too far from their clock, so a request cannot be replayed. The signature
    covers the body, so it cannot be rewritten either. ``continuation`` is text already
    delivered to the user by a previous executor, to be continued rather than repeated.
    """

    request_id: bytes
    network_id: str
    requester: str
    executor: str
    """The peer this offer is for; another peer must refuse it."""
    model: str
    kind: str
    """``"chat"`` or ``"completion"``."""
    body: bytes
    """The OpenAI request body as JSON."""
    created_ms: int
    continuation: str
    max_price_per_1k: int
    signature: bytes

    SIGNER = "requester"

    def _check(self) -> None:
        if len(self.request_id) != REQUEST_ID_SIZE:
            raise MalformedMessage(f"request_id must be {REQUEST_ID_SIZE} bytes")
        if self.kind not in _KINDS:
            raise MalformedMessage(f"kind must be one of {_KINDS}")
        _short("model", self.model)
        if len(self.body) > DEFAULT_LIMITS.max_prompt or len(self.continuation) > DEFAULT_LIMITS.max_prompt:
            raise MalformedMessage("request body exceeds max_prompt")
        _non_negative("max_price_per_1k", self.max_price_per_1k)

    def header(self) -> RequestHeader:
        """This request with its texts replaced by their hashes (see :class:`RequestHeader`)."""
        return RequestHeader(
            request_id=self.request_id,
            network_id=self.network_id,
            requester=self.requester,
            executor=self.executor,
            model=self.model,
            kind=self.kind,
            body_hash=sha256(self.body),
            created_ms=self.created_ms,
            continuation_hash=sha256(self.continuation.encode()),
            max_price_per_1k=self.max_price_per_1k,
        )

    def request_hash(self) -> bytes:
        """What the executor's receipt cites: the hash of :meth:`header`."""
        return self.header().hash()


@message(18)
class RequestHeader(Message):
    """An :class:`InferRequest` without its texts: their SHA-256 instead of the body and the
    continuation, and no signature. A receipt's ``request_hash`` is the hash of this
    header, so a duel order can show that two receipts answer the same prompt (equal
    ``body_hash``) without carrying the prompt itself (up to 1 MiB) into a ledger block."""

    request_id: bytes
    network_id: str
    requester: str
    executor: str
    model: str
    kind: str
    body_hash: bytes
    created_ms: int
    continuation_hash: bytes
    max_price_per_1k: int

    def _check(self) -> None:
        if len(self.request_id) != REQUEST_ID_SIZE:
            raise MalformedMessage(f"request_id must be {REQUEST_ID_SIZE} bytes")
        if self.kind not in _KINDS:
            raise MalformedMessage(f"kind must be one of {_KINDS}")
        _short("network_id", self.network_id, 64)
        _short("requester", self.requester, 128)
        _short("executor", self.executor, 128)
        _short("model", self.model)
        if len(self.body_hash) != 32 or len(self.continuation_hash) != 32:
            raise MalformedMessage("hashes are 32 bytes")
        _non_negative("created_ms", self.created_ms)
        _non_negative("max_price_per_1k", self.max_price_per_1k)

    def hash(self) -> bytes:
        """SHA-256 of the canonical encoding: a receipt's ``request_hash``."""
        return sha256(self.encode())


@message(11)
class Accept(Message):
    """The executor takes the request; chunks follow."""

    request_id: bytes


@message(12)
class Reject(Message):
    """The executor declines; the requester tries the next candidate."""

    request_id: bytes
    reason: str

    def _check(self) -> None:
        _short("reason", self.reason, 1024)


@message(13)
class Chunk(Message):
    """A piece of generated text, in order (``index`` counts chunks from 0)."""

    index: int
    text: str

    def _check(self) -> None:
        _non_negative("index", self.index)
        if len(self.text) > DEFAULT_LIMITS.max_text_chunk:
            raise MalformedMessage("chunk text exceeds max_text_chunk")


@message(14)
class Receipt(SignedMessage):
    """The executor's signed statement of work done; the requester's payment cites it.

    ``partial`` receipts cover the tokens delivered before a failure.
    """

    request_id: bytes
    network_id: str
    requester: str
    executor: str
    model: str
    request_hash: bytes
    """``InferRequest.request_hash()`` of the request this answers (its header's hash)."""
    response_hash: bytes
    """SHA-256 of the UTF-8 text this executor generated."""
    prompt_tokens: int
    completion_tokens: int
    price: int
    """Micro-credits owed for this work."""
    partial: bool
    timestamp_ms: int
    signature: bytes

    SIGNER = "executor"

    def _check(self) -> None:
        for n in ("prompt_tokens", "completion_tokens", "price", "timestamp_ms"):
            _non_negative(n, getattr(self, n))
        if len(self.request_hash) != 32 or len(self.response_hash) != 32:
            raise MalformedMessage("hashes are 32 bytes")


@message(15)
class Done(Message):
    """The end of a successful answer."""

    finish_reason: str
    receipt: Receipt


@message(16)
class Failure(Message):
    """The executor could not finish. ``receipt`` is a partial receipt if chunks were sent."""

    code: str
    message: str
    receipt: Receipt | None

    def _check(self) -> None:
        _short("code", self.code, 64)
        _short("message", self.message, 4096)


@message(17)
class Cancel(Message):
    """The requester's user left: stop generating ``request_id`` now. The executor answers
    with ``Failure("cancelled", ...)`` carrying a partial receipt for exactly the text it
    sent, so the requester pays for what was produced and nothing more."""

    request_id: bytes

    def _check(self) -> None:
        if len(self.request_id) != REQUEST_ID_SIZE:
            raise MalformedMessage(f"request_id must be {REQUEST_ID_SIZE} bytes")
