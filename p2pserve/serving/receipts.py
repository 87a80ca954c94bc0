"""Receipt rules of the infer protocol: what an answer costs, how many tokens a receipt may
claim, whether a receipt is valid, and which offers are fresh. Pure: no I/O, no clock of its
own (time is an argument).

Invariants: prices are integer micro-credits rounded up (:func:`price_for`); a receipt
passes :func:`check_receipt` only if it is signed by the request's executor and matches the
request and exactly the text received, claims no more tokens than :class:`Bounds` allows
(what the *requester* can check itself), at no more than the price the request allowed; a
:class:`ReplayGuard` never accepts the same (requester, request_id) twice, and its memory is
bounded by ``max_entries``.

The token bounds, the same on both sides (the executor clamps its backend's ``usage`` to
them, so an honest receipt always passes):

* completion tokens ≤ the request's ``max_tokens`` (or ``max_completion_tokens``, the
  smaller), ≤ the executor's advertised context length, and ≤ one token per UTF-8 byte of
  the text received plus :data:`TOKEN_SLACK` plus the longest ``stop`` string's bytes (a
  token decodes to at least one byte with byte-level BPE; special tokens such as the end
  of sequence and a stop sequence the server strips are counted but not sent);
* prompt tokens ≤ the UTF-8 bytes of the request body and continuation plus
  :data:`PROMPT_SLACK` (chat templates and default system prompts add tokens the body
  does not show).

So an executor can overcharge by at most the ratio of bytes to real tokens (~4x for
English text with a typical tokenizer), never by an amount of its choosing.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pserve.crypto import sha256
from p2pserve.errors import RemoteProtocolError
from p2pserve.wire.infer import InferRequest, Receipt

__all__ = ["PROMPT_SLACK", "TOKEN_SLACK", "Bounds", "ReplayGuard", "check_receipt", "price_for"]

TOKEN_SLACK = 16
"""Completion tokens a receipt may claim beyond one per byte of text (end-of-sequence and
other special tokens that produce no text)."""
PROMPT_SLACK = 512
"""Prompt tokens a receipt may claim beyond one per byte of the request body."""


def price_for(completion_tokens: int, price_per_1k: int) -> int:
    """Micro-credits owed for ``completion_tokens`` at ``price_per_1k``: rounded up."""
    return -(-completion_tokens * price_per_1k // 1000)


def _positive_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


@dataclass(frozen=True, slots=True)
class Bounds:
    """What a receipt for one request may claim (see the module docstring)."""

    max_tokens: int | None
    """The request's own cap on new tokens (None: only the context length caps them)."""
    context_length: int
    """The executor's advertised context length."""
    stop_bytes: int
    """UTF-8 bytes of the longest ``stop`` string (0 without one)."""
    prompt_bytes: int
    """UTF-8 bytes of the request body plus the continuation."""

    @classmethod
    def of(cls, body: Mapping[str, Any], body_bytes: int, continuation: str, context_length: int) -> Bounds:
        caps = [c for c in (_positive_int(body.get("max_tokens")), _positive_int(body.get("max_completion_tokens"))) if c]
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []
        return cls(
            max_tokens=min(caps) if caps else None,
            context_length=max(1, context_length),
            stop_bytes=max((len(s.encode()) for s in stops), default=0),
            prompt_bytes=body_bytes + len(continuation.encode()),
        )

    def worst_case_tokens(self) -> int:
        """The most completion tokens any answer to this request may be charged for."""
        return min(self.max_tokens or self.context_length, self.context_length)

    def completion_tokens(self, text: str) -> int:
        """The most completion tokens a receipt for exactly ``text`` may claim."""
        by_text = len(text.encode()) + TOKEN_SLACK + self.stop_bytes
        return min(by_text, self.worst_case_tokens())

    def prompt_tokens(self) -> int:
        """The most prompt tokens a receipt may claim."""
        return self.prompt_bytes + PROMPT_SLACK


def check_receipt(
    receipt: Receipt,
    request: InferRequest,
    text: str,
    *,
    partial: bool,
    bounds: Bounds,
) -> None:
    """Raise RemoteProtocolError (BadSignature for a bad signature) unless ``receipt`` is the
    executor's valid receipt for ``request`` and exactly ``text``, within ``bounds``, at no
    more than the price ``request`` allowed."""
    receipt.verify()
    problems = []
    if receipt.executor != request.executor:
        problems.append("executor")
    if receipt.requester != request.requester:
        problems.append("requester")
    if receipt.request_id != request.request_id or receipt.network_id != request.network_id:
        problems.append("request id or network")
    if receipt.model != request.model:
        problems.append("model")
    if receipt.request_hash != request.request_hash():
        problems.append("request hash")
    if receipt.response_hash != sha256(text.encode()):
        problems.append("response hash")
    if receipt.partial != partial:
        problems.append("partial flag")
    if receipt.completion_tokens > bounds.completion_tokens(text):
        problems.append(f"completion tokens ({receipt.completion_tokens} > {bounds.completion_tokens(text)})")
    if receipt.prompt_tokens > bounds.prompt_tokens():
        problems.append(f"prompt tokens ({receipt.prompt_tokens} > {bounds.prompt_tokens()})")
    if receipt.price > price_for(receipt.completion_tokens, request.max_price_per_1k):
        problems.append("price")
    if problems:
        raise RemoteProtocolError(f"receipt from {receipt.executor} does not match: {', '.join(problems)}")


class ReplayGuard:
    """Bounded memory of offers seen, so none is executed twice. Pure; time is an argument.

    An offer is fresh when its ``created_ms`` lies within ``window_ms`` of ``now_ms`` and its
    (requester, request_id) was not seen. Entries are forgotten once their ``created_ms``
    leaves the window, since the window check refuses them from then on. When
    ``max_entries`` offers are inside the window, new offers are refused ("busy") rather
    than forgetting one early.
    """

    def __init__(self, window_ms: int, max_entries: int = 65_536) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: set[tuple[str, bytes]] = set()
        self._by_age: list[tuple[int, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, requester: str, request_id: bytes, created_ms: int, now_ms: int) -> str | None:
        """None and remember the offer if it is fresh, else the reject reason."""
        while self._by_age and self._by_age[0][0] < now_ms - self.window_ms:
            _, r, i = heapq.heappop(self._by_age)
            self._seen.discard((r, i))
        if abs(now_ms - created_ms) > self.window_ms:
            return "stale"
        key = (requester, request_id)
        if key in self._seen:
            return "replay"
        if len(self._seen) >= self.max_entries:
            return "busy"
        self.remember(requester, request_id, created_ms)
        return None

    def remember(self, requester: str, request_id: bytes, created_ms: int) -> None:
        """Mark an offer as seen without checking it (offers loaded from a replay log)."""
        key = (requester, request_id)
        if key not in self._seen:
            self._seen.add(key)
            heapq.heappush(self._by_age, (created_ms, requester, request_id))

    def entries(self) -> list[tuple[str, bytes, int]]:
        """``(requester, request_id, created_ms)`` of every offer remembered."""
        return [(r, i, c) for c, r, i in self._by_age]
