"""Statuses already verified, by their exact bytes: decode and verify each gossip message once.

Pure logic: no I/O. A gossiped status is checked by the topic validator (so a forged or
garbled one is neither delivered nor relayed) and then read by the receive loop; both ask
:meth:`VerifiedStatuses.status_of`, so the bytes are decoded and their signature checked
once, and the receive loop gets the very object the validator accepted.

Invariants:

* only bytes that decode to a well-formed :class:`~p2pserve.wire.infer.Status` whose
  signature verifies are remembered, mapped to that (immutable) Status; the key is the
  whole message, so a single changed bit is a miss and is checked from scratch;
* a hit returns what decoding and verifying the same bytes again would: skipping the work is
  invisible except for time;
* at most ``capacity`` entries, the oldest forgotten first; a forgotten entry only costs a
  re-check.

One instance (:data:`SHARED`) serves every gossip service in the process by default. In a
deployment that is one node per process; in the simulator, where the memory transport hands
every node the same bytes, a status is verified once per process instead of once per node
(so simulated wall time undercounts what signature checks cost a real node).
"""

from __future__ import annotations

from collections.abc import Callable

from p2pserve.errors import ProtocolError
from p2pserve.wire.codec import decode
from p2pserve.wire.gossip import Status

__all__ = ["SHARED", "VerifiedStatuses"]

DEFAULT_CAPACITY = 2048
"""Statuses remembered: enough for every status in flight in a 500-node simulation."""


class VerifiedStatuses:
    """A bounded memo of status bytes → the verified :class:`Status` they encode."""

    __slots__ = ("_memo", "capacity", "checked", "hits")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._memo: dict[bytes, Status] = {}
        self.hits = 0
        """Lookups answered from memory."""
        self.checked = 0
        """Messages decoded and verified from scratch (whatever the outcome)."""

    def __len__(self) -> int:
        return len(self._memo)

    def status_of(self, data: bytes, want: Callable[[Status], bool] | None = None) -> Status | None:
        """The Status ``data`` encodes, or None if it is malformed, its signature does not
        verify, or ``want`` (if given) rejects it.

        ``want`` runs before the signature check on a miss (cheap checks first, so a
        message for another network costs no verification) and on every hit.
        """
        status = self._memo.get(data)
        if status is not None:
            self.hits += 1
            return status if want is None or want(status) else None
        self.checked += 1
        try:
            status = decode(data, Status)
            if want is not None and not want(status):
                return None
            status.verify()
        except ProtocolError:
            return None
        memo = self._memo
        if len(memo) >= self.capacity:
            del memo[next(iter(memo))]  # dicts keep insertion order: the oldest goes
        memo[bytes(data)] = status
        return status

    def clear(self) -> None:
        self._memo.clear()


SHARED = VerifiedStatuses()
"""The process-wide memo gossip services use unless given their own."""
