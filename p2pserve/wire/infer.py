"""Wire messages of inference forwarding, ``/p2pserve/infer/1`` (tags 10-29).

Credit amounts are integers in micro-credits (1 credit = 1_000_000). Times on the wire are
integer milliseconds of the sender's wall clock (``*_ms``); they are only ever compared
with generous tolerances. The other protocols' messages: :mod:`p2pserve.wire.gossip`
(1-9), :mod:`p2pserve.ledger.blocks` and :mod:`p2pserve.wire.sync` (30-49),
:mod:`p2pserve.wire.duel` (50-69).
"""

from __future__ import annotations

from p2pserve.crypto import sha256
from p2pserve.errors import MalformedMessage
from p2pserve.wire.codec import Message, SignedMessage, check_length, check_non_negative, message
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = [
    "INFER_PROTOCOL",
    "REQUEST_ID_SIZE",
    "Accept",
    "Cancel",
    "Chunk",
    "Done",
    "Failure",
    "InferRequest",
    "Receipt",
    "Reject",
    "RequestHeader",
]

INFER_PROTOCOL = "/p2pserve/infer/1"

REQUEST_ID_SIZE = 16
_KINDS = ("chat", "completion")


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
        check_length("model", self.model)
        if len(self.body) > DEFAULT_LIMITS.max_prompt or len(self.continuation) > DEFAULT_LIMITS.max_prompt:
            raise MalformedMessage("request body exceeds max_prompt")
        check_non_negative("max_price_per_1k", self.max_price_per_1k)

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
        check_length("network_id", self.network_id, 64)
        check_length("requester", self.requester, 128)
        check_length("executor", self.executor, 128)
        check_length("model", self.model)
        if len(self.body_hash) != 32 or len(self.continuation_hash) != 32:
            raise MalformedMessage("hashes are 32 bytes")
        check_non_negative("created_ms", self.created_ms)
        check_non_negative("max_price_per_1k", self.max_price_per_1k)

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
        check_length("reason", self.reason, 1024)


@message(13)
class Chunk(Message):
    """A piece of generated text, in order (``index`` counts chunks from 0)."""

    index: int
    text: str

    def _check(self) -> None:
        check_non_negative("index", self.index)
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
            check_non_negative(n, getattr(self, n))
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
        check_length("code", self.code, 64)
        check_length("message", self.message, 4096)


@message(17)
class Cancel(Message):
    """The requester's user left: stop generating ``request_id`` now. The executor answers
    with ``Failure("cancelled", ...)`` carrying a partial receipt for exactly the text it
    sent, so the requester pays for what was produced and nothing more."""

    request_id: bytes

    def _check(self) -> None:
        if len(self.request_id) != REQUEST_ID_SIZE:
            raise MalformedMessage(f"request_id must be {REQUEST_ID_SIZE} bytes")
