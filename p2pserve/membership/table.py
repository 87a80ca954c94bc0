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

Bounds and reachability (an attacker can sign statuses for as many throwaway identities as
it likes, so a valid signature proves nothing about a peer's worth):

* at most ``max_peers`` entries; at most ``max_per_host`` whose advertised addresses share a
  host (an IP, a DNS name, a memory transport index); at most ``max_unreached_per_source``
  not yet reached peers first heard of through one relaying connection (where the transport
  names it). A newcomer over a limit is refused (:attr:`UpdateResult.TABLE_FULL`,
  ``HOST_LIMIT``, ``SOURCE_LIMIT``); a full table first makes room by forgetting the
  longest-listed peer that is unreached and already failed a probe. Known peers' updates
  are never refused by a limit.
* a peer learned from gossip (``update(..., gossiped=True)``) is *unreached* until the node
  reached it (:meth:`PeerTable.mark_reached`: a successful dial, or a connection it holds);
  unreached peers are never candidates. The gossip service probes them
  (:meth:`PeerTable.due_probes`); a failed probe (:meth:`PeerTable.mark_unreachable`) waits
  ``probe_first`` seconds, doubling per failure up to ``probe_cap``. Reach state outlives an
  entry's expiry (bounded), so a throwaway identity that comes back keeps its backoff and a
  restarted honest peer stays reached. Peers added without ``gossiped`` (tests, the caller
  vouching for them) are reached.
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
    TABLE_FULL = "table-full"
    HOST_LIMIT = "host-limit"
    SOURCE_LIMIT = "source-limit"

    @property
    def refused(self) -> bool:
        """A newcomer refused by one of the table's bounds."""
        return self in _REFUSED


_REFUSED = frozenset({UpdateResult.TABLE_FULL, UpdateResult.HOST_LIMIT, UpdateResult.SOURCE_LIMIT})

_HOST_PROTOCOLS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6", "dnsaddr", "memory"})
_MAX_HOSTS_PER_PEER = 4


def host_of(addr: str) -> str | None:
    """The host part of a multiaddr string (``ip4/203.0.113.7``, ``memory/3``), or None."""
    parts = addr.split("/", 3)
    if len(parts) < 3 or parts[0] or parts[1] not in _HOST_PROTOCOLS or not parts[2]:
        return None
    return f"{parts[1]}/{parts[2]}"


def hosts_of(addrs: tuple[str, ...]) -> tuple[str, ...]:
    """The distinct hosts of a status's first few addresses, in order."""
    out: list[str] = []
    for a in addrs[:_MAX_HOSTS_PER_PEER]:
        h = host_of(a)
        if h is not None and h not in out:
            out.append(h)
    return tuple(out)


@dataclass(slots=True)
class _Reach:
    """Whether we reached a gossip-learned peer, and its probe backoff."""

    reached: bool = False
    next_probe: float = 0.0
    delay: float = 0.0
    failures: int = 0


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

    def __init__(
        self,
        self_id: str,
        network_id: str,
        ttl: float,
        *,
        ttl_intervals: float = 3.0,
        max_peers: int = 4096,
        max_per_host: int = 64,
        max_unreached_per_source: int = 256,
        probe_first: float = 2.0,
        probe_cap: float = 600.0,
    ) -> None:
        if min(max_peers, max_per_host, max_unreached_per_source) < 1 or not 0 < probe_first <= probe_cap:
            raise ValueError("invalid peer table bounds")
        self.max_peers = max_peers
        self.max_per_host = max_per_host
        self.max_unreached_per_source = max_unreached_per_source
        self.probe_first = probe_first
        self.probe_cap = probe_cap
        self._reach: dict[str, _Reach] = {}
        """Reach state of gossip-learned peers (listed or recently listed, bounded)."""
        self._unreached: dict[str, None] = {}
        """Listed peers not yet reached, in the order they were listed."""
        self._failed: dict[str, None] = {}
        """Listed unreached peers that failed a probe, in the order they were listed."""
        self._hosts: dict[str, tuple[str, ...]] = {}
        """The hosts each listed peer advertises (see :func:`hosts_of`)."""
        self._per_host: dict[str, int] = {}
        self._source_of: dict[str, str] = {}
        """The relaying connection a listed, still unreached peer was first heard through."""
        self._per_source: dict[str, int] = {}
        self.refusals = 0
        """Newcomers refused by a bound."""
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

    def update(
        self, status: Status, now: float, *, verified: bool = False, gossiped: bool = False, source: str | None = None
    ) -> UpdateResult:
        """Merge one received status. Verifies its signature unless ``verified`` says it was.

        ``gossiped``: it was learned from gossip, so a new peer starts unreached; ``source``:
        the connection it was relayed over, when the transport says (counted against
        ``max_unreached_per_source``). Peers that serve no model are never probed, so an
        unreached one is the first to go when the table is full."""
        if status.network_id != self.network_id:
            return UpdateResult.WRONG_NETWORK
        if status.peer_id == self.self_id:
            return UpdateResult.SELF
        pid = status.peer_id
        old = self._entries.get(pid)
        if old is not None and status.seq <= old.status.seq:
            return UpdateResult.STALE
        if not verified:
            try:
                status.verify()
            except (BadSignature, MalformedMessage):
                return UpdateResult.BAD_SIGNATURE
        if old is None:
            hosts = hosts_of(status.addrs)
            refused = self._admit(pid, hosts, gossiped, source)
            if refused is not None:
                self.refusals += 1
                return refused
            self._list(pid, hosts, gossiped, source, now, bool(status.models))
        elif status.addrs != old.status.addrs:
            self._count_hosts(pid, -1)
            self._hosts[pid] = hosts_of(status.addrs)
            self._count_hosts(pid, 1)
        entry = PeerEntry(status, now)
        self._entries[pid] = entry
        if len(self._deadlines) > _MAX_STALE_DEADLINES * len(self._entries) + 64:
            self._rebuild_deadlines()
        else:
            heapq.heappush(self._deadlines, (self._deadline(entry), pid))
        return UpdateResult.NEW if old is None else UpdateResult.UPDATED

    # -- bounds and reachability -------------------------------------------------------------

    def _admit(self, pid: str, hosts: tuple[str, ...], gossiped: bool, source: str | None) -> UpdateResult | None:
        """Why a newcomer is refused, or None (room made if the table was full)."""
        per_host = self._per_host
        if any(per_host.get(h, 0) >= self.max_per_host for h in hosts):
            return UpdateResult.HOST_LIMIT
        reach = self._reach.get(pid)
        unreached = gossiped and (reach is None or not reach.reached)
        if unreached and source is not None and self._per_source.get(source, 0) >= self.max_unreached_per_source:
            return UpdateResult.SOURCE_LIMIT
        if len(self._entries) >= self.max_peers:
            if not self._failed:
                return UpdateResult.TABLE_FULL
            self._drop(next(iter(self._failed)))
        return None

    def _list(
        self, pid: str, hosts: tuple[str, ...], gossiped: bool, source: str | None, now: float, serves: bool
    ) -> None:
        self._hosts[pid] = hosts
        self._count_hosts(pid, 1)
        reach = self._reach.get(pid)
        if reach is None and gossiped:
            if len(self._reach) >= 2 * self.max_peers:
                self._reach = {p: r for p, r in self._reach.items() if p in self._entries}
            reach = self._reach[pid] = _Reach(next_probe=now, delay=self.probe_first)
        if reach is not None and not reach.reached:
            self._unreached[pid] = None
            if reach.failures or not serves:
                self._failed[pid] = None  # evictable: failed a probe, or will never be probed
            if source is not None:
                self._source_of[pid] = source
                self._per_source[source] = self._per_source.get(source, 0) + 1

    def _count_hosts(self, pid: str, delta: int) -> None:
        per_host = self._per_host
        for h in self._hosts.get(pid, ()):
            n = per_host.get(h, 0) + delta
            if n > 0:
                per_host[h] = n
            else:
                per_host.pop(h, None)

    def _settle_source(self, pid: str) -> None:
        source = self._source_of.pop(pid, None)
        if source is not None:
            n = self._per_source[source] - 1
            if n > 0:
                self._per_source[source] = n
            else:
                del self._per_source[source]

    def _drop(self, pid: str) -> None:
        """Forget a listed peer (its reach state is kept; its deadline is lazily discarded)."""
        del self._entries[pid]
        self._count_hosts(pid, -1)
        self._hosts.pop(pid, None)
        self._unreached.pop(pid, None)
        self._failed.pop(pid, None)
        self._settle_source(pid)

    def routable(self, peer_id: str) -> bool:
        """Whether ``peer_id`` may be offered work as far as reachability goes: reached, or
        not learned from gossip."""
        reach = self._reach.get(peer_id)
        return reach is None or reach.reached

    def mark_reached(self, peer_id: str) -> None:
        """We reached ``peer_id`` (a dial succeeded, or it is connected to us)."""
        reach = self._reach.get(peer_id)
        if reach is None or reach.reached:
            return
        reach.reached, reach.failures, reach.delay = True, 0, self.probe_first
        self._unreached.pop(peer_id, None)
        self._failed.pop(peer_id, None)
        self._settle_source(peer_id)

    def mark_unreachable(self, peer_id: str, now: float) -> float:
        """A probe of ``peer_id`` failed: seconds until the next one (backoff doubles)."""
        reach = self._reach.get(peer_id)
        if reach is None:
            return 0.0
        wait = reach.delay
        reach.reached = False
        reach.failures += 1
        reach.next_probe = now + wait
        reach.delay = min(wait * 2, self.probe_cap)
        if peer_id in self._entries:
            self._unreached[peer_id] = None
            self._failed[peer_id] = None
        return wait

    def failures(self, peer_id: str) -> int:
        """Failed probes of ``peer_id`` since it was last reached."""
        reach = self._reach.get(peer_id)
        return 0 if reach is None else reach.failures

    def due_probes(self, now: float, limit: int) -> list[PeerEntry]:
        """Up to ``limit`` listed unreached peers that serve a model (nobody else is ever
        offered work, so nobody else needs reaching) and whose next probe is due, longest
        waiting first."""
        reach, entries = self._reach, self._entries
        due = [(reach[p].next_probe, p) for p in self._unreached if reach[p].next_probe <= now and entries[p].status.models]
        due.sort()
        return [entries[p] for _, p in due[:limit]]

    def next_probe(self) -> float | None:
        """When the earliest probe :meth:`due_probes` will return is due; None with none."""
        reach, entries = self._reach, self._entries
        return min((reach[p].next_probe for p in self._unreached if entries[p].status.models), default=None)

    def unreached(self) -> int:
        """Listed peers not reached yet."""
        return len(self._unreached)

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
                self._drop(pid)
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
        if peer_id in self._entries:
            self._drop(peer_id)

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
        """Peers that serve ``model``, say they accept work, are reached (see :meth:`routable`)
        and are not frozen or excluded."""
        skip = set(exclude) | self._frozen
        skip.update(self._unreached)
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
