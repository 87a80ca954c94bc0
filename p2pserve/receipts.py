"""Receipt rules of the infer protocol: what an answer costs, whether a receipt is valid,
and which offers are fresh. Pure: no I/O, no clock of its own (time is an argument).

Invariants: prices are integer micro-credits rounded up (:func:`price_for`); a receipt
passes :func:`check_receipt` only if it is signed by the request's executor and matches the
request and exactly the text received, at no more than the price the request allowed; a
:class:`ReplayGuard` never accepts the same (requester, request_id) twice, and its memory is
bounded by ``max_entries``.
"""

from __future__ import annotations

import heapq

from p2pserve.crypto import sha256
from p2pserve.errors import RemoteProtocolError
from p2pserve.wire.messages import InferRequest, Receipt

__all__ = ["ReplayGuard", "check_receipt", "price_for"]


def price_for(completion_tokens: int, price_per_1k: int) -> int:
    """Micro-credits owed for ``completion_tokens`` at ``price_per_1k``: rounded up."""
    return -(-completion_tokens * price_per_1k // 1000)


def check_receipt(
    receipt: Receipt,
    request: InferRequest,
    text: str,
    *,
    partial: bool,
) -> None:
    """Raise RemoteProtocolError (BadSignature for a bad signature) unless ``receipt`` is the
    executor's valid receipt for ``request`` and exactly ``text``, at no more than the price
    ``request`` allowed."""
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
    if receipt.request_hash != request.digest():
        problems.append("request hash")
    if receipt.response_hash != sha256(text.encode()):
        problems.append("response hash")
    if receipt.partial != partial:
        problems.append("partial flag")
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
        self._seen.add(key)
        heapq.heappush(self._by_age, (created_ms, requester, request_id))
        return None
