"""The peer table: what this node believes about every other node, from signed statuses.

Pure logic: no I/O, no clock (``now`` is an argument, in seconds of trio's clock). Rules:

* only a status whose signature verifies for its ``peer_id`` is accepted;
* statuses of another network, and our own, are ignored;
* per peer the highest ``seq`` wins; an older or equal ``seq`` changes nothing;
* a peer not heard from for ``ttl`` seconds, or for ``ttl_intervals`` of the gossip
  intervals it declares if that is longer (big networks gossip more slowly), is expired by
  :meth:`PeerTable.expire`. Each update moves the peer's deadline; expiry pops a deadline
  heap, so a call costs O(log n) per expired (or superseded) deadline, not a scan of the table;
* frozen peers (e.g. proven equivocators on the ledger) stay listed but are never candidates.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from p2pserve.errors import BadSignature, MalformedMessage
from p2pserve.wire.gossip import ModelStatus, Status

__all__ = ["PeerEntry", "PeerTable", "UpdateResult"]

_MAX_STALE_DEADLINES = 4
"""Deadlines kept per live peer (superseded ones included) before the heap is rebuilt."""


class UpdateResult(enum.Enum):
    NEW = "new"
    UPDATED = "updated"
    STALE = "stale"
    BAD_SIGNATURE = "bad-signature"
    WRONG_NETWORK = "wrong-network"
    SELF = "self"


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """The newest status of one peer and when (local clock) we received it."""

    status: Status
    last_seen: float

    @property
    def peer_id(self) -> str:
        return self.status.peer_id

    def model(self, name: str) -> ModelStatus | None:
        for m in self.status.models:
            if m.name == name:
                return m
        return None


class PeerTable:
    """Newest signed status per peer, with expiry. Not thread-safe; owned by one trio task tree."""

    def __init__(self, self_id: str, network_id: str, ttl: float, *, ttl_intervals: float = 3.0) -> None:
        self.self_id = self_id
        self.network_id = network_id
        self._ttl = ttl
        self._ttl_intervals = ttl_intervals
        self._entries: dict[str, PeerEntry] = {}
        self._frozen: set[str] = set()
        # (deadline, peer id), lazily deleted: an update pushes the peer's new deadline and
        # leaves the old one, which expire() discards when it surfaces. Rebuilt from the
        # entries when stale deadlines outnumber live ones (a peer gossiping very fast).
        self._deadlines: list[tuple[float, str]] = []

    @property
    def ttl(self) -> float:
        """Seconds of silence after which any peer expires (at the least)."""
        return self._ttl

    @ttl.setter
    def ttl(self, value: float) -> None:
        self._ttl = value
        self._rebuild_deadlines()

    @property
    def ttl_intervals(self) -> float:
        """How many of its own declared gossip intervals a peer may stay silent."""
        return self._ttl_intervals

    @ttl_intervals.setter
    def ttl_intervals(self, value: float) -> None:
        self._ttl_intervals = value
        self._rebuild_deadlines()

    def _rebuild_deadlines(self) -> None:
        self._deadlines = [(self._deadline(e), pid) for pid, e in self._entries.items()]
        heapq.heapify(self._deadlines)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries

    def update(self, status: Status, now: float, *, verified: bool = False) -> UpdateResult:
        """Merge one received status. Verifies its signature unless ``verified`` says it was."""
        if status.network_id != self.network_id:
            return UpdateResult.WRONG_NETWORK
        if status.peer_id == self.self_id:
            return UpdateResult.SELF
        old = self._entries.get(status.peer_id)
        if old is not None and status.seq <= old.status.seq:
            return UpdateResult.STALE
        if not verified:
            try:
                status.verify()
            except (BadSignature, MalformedMessage):
                return UpdateResult.BAD_SIGNATURE
        entry = PeerEntry(status, now)
        self._entries[status.peer_id] = entry
        if len(self._deadlines) > _MAX_STALE_DEADLINES * len(self._entries) + 64:
            self._rebuild_deadlines()
        else:
            heapq.heappush(self._deadlines, (self._deadline(entry), status.peer_id))
        return UpdateResult.NEW if old is None else UpdateResult.UPDATED

    def ttl_of(self, entry: PeerEntry) -> float:
        """Seconds of silence after which ``entry`` expires."""
        return max(self._ttl, self._ttl_intervals * entry.status.interval_ms / 1000)

    def _deadline(self, entry: PeerEntry) -> float:
        return entry.last_seen + self.ttl_of(entry)

    def expire(self, now: float) -> list[str]:
        """Drop peers silent for longer than their ttl (see :meth:`ttl_of`); return their IDs,
        in deadline order.

        Only deadlines at or before ``now`` are examined. That misses no expired peer: float
        rounding is monotonic, so ``last_seen + ttl > now`` implies ``now - last_seen <= ttl``.
        """
        heap, gone, keep = self._deadlines, [], []
        while heap and heap[0][0] <= now:
            deadline, pid = heapq.heappop(heap)
            entry = self._entries.get(pid)
            if entry is None:
                continue  # removed, or expired through an earlier deadline
            if now - entry.last_seen > self.ttl_of(entry):
                del self._entries[pid]
                gone.append(pid)
            elif deadline == self._deadline(entry):
                keep.append((deadline, pid))  # due exactly now: expires after, not at, its deadline
            # else: superseded by an update, whose deadline is in the heap
        for item in keep:
            heapq.heappush(heap, item)
        return gone

    def next_deadline(self) -> float | None:
        """The earliest deadline (``last_seen + ttl_of``) of a listed peer; None with no peers.
        :meth:`expire` drops that peer at the first call strictly after it."""
        heap, entries = self._deadlines, self._entries
        while heap:
            deadline, pid = heap[0]
            entry = entries.get(pid)
            if entry is not None and deadline == self._deadline(entry):
                return deadline
            heapq.heappop(heap)  # superseded or removed: nobody will miss it
        return None

    def remove(self, peer_id: str) -> None:
        self._entries.pop(peer_id, None)

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._entries.get(peer_id)

    def entries(self) -> list[PeerEntry]:
        """All known peers, sorted by peer ID (stable order for deterministic choices)."""
        return [self._entries[k] for k in sorted(self._entries)]

    def freeze(self, peer_id: str) -> None:
        """Never route to ``peer_id`` again (e.g. it equivocated on the ledger)."""
        self._frozen.add(peer_id)

    def is_frozen(self, peer_id: str) -> bool:
        return peer_id in self._frozen

    def candidates(self, model: str, *, exclude: Iterable[str] = ()) -> list[PeerEntry]:
        """Peers that serve ``model``, say they accept work, and are not frozen or excluded."""
        skip = set(exclude) | self._frozen
        out = []
        for e in self.entries():
            if e.peer_id in skip or not e.status.accepting:
                continue
            m = e.model(model)
            if m is not None and m.accepting:
                out.append(e)
        return out

    def models(self) -> set[str]:
        """Every model some known peer serves."""
        return {m.name for e in self._entries.values() for m in e.status.models}
