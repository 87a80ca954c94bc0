"""Which addresses to dial again, and when: the bootstrap list and the peers we lost.

A node below its connection target dials, besides the peers it knows from gossip, its
bootstrap addresses (for ever) and the addresses of peers that went silent (for
``remember_s``), each on its own exponential backoff from ``first`` to ``cap`` seconds. So
a restarted node, whether or not it has a bootstrap list of its own, is dialed by the
nodes that knew it within ``cap`` seconds of coming back, and a node whose bootstrap was
down reconnects once it is up. Pure: time is an argument; nothing here dials.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Redialer", "peer_of"]


def peer_of(addr: str) -> str | None:
    """The peer ID an address names (``.../p2p/<id>``), or None."""
    head, sep, tail = addr.rpartition("/p2p/")
    return tail if sep and tail and "/" not in tail else None


@dataclass(slots=True)
class _Entry:
    addr: str
    bootstrap: bool
    next_try: float
    delay: float
    lost_at: float


class Redialer:
    """Addresses to redial with backoff (see the module docstring)."""

    def __init__(
        self,
        bootstrap: Iterable[str] = (),
        *,
        first: float = 2.0,
        cap: float = 10.0,
        remember_s: float = 3600.0,
        max_entries: int = 64,
    ) -> None:
        if not 0 < first <= cap:
            raise ValueError("need 0 < first <= cap")
        self.first, self.cap, self.remember_s, self.max_entries = first, cap, remember_s, max_entries
        self._entries: dict[str, _Entry] = {a: _Entry(a, True, 0.0, first, 0.0) for a in bootstrap}

    def __len__(self) -> int:
        return len(self._entries)

    def lost(self, addrs: Iterable[str], now: float) -> None:
        """A peer went silent: remember its addresses (first retry after ``first``)."""
        for addr in addrs:
            entry = self._entries.get(addr)
            if entry is None:
                self._entries[addr] = _Entry(addr, False, now + self.first, self.first, now)
            elif not entry.bootstrap:
                entry.lost_at = now
        self._prune(now)

    def due(self, now: float, connected: set[str], limit: int) -> list[str]:
        """Up to ``limit`` addresses whose retry time has come and whose peer is not
        connected (bootstrap addresses first, then the longest-waiting)."""
        self._prune(now)
        ready = [e for e in self._entries.values() if e.next_try <= now and peer_of(e.addr) not in connected]
        ready.sort(key=lambda e: (not e.bootstrap, e.next_try, e.addr))
        return [e.addr for e in ready[:limit]]

    def result(self, addr: str, ok: bool, now: float) -> float:
        """Record a dial of ``addr``; the seconds until the next try (0 after a success:
        lost peers are forgotten once reached, bootstrap addresses start over)."""
        entry = self._entries.get(addr)
        if entry is None:
            return 0.0
        if ok:
            if entry.bootstrap:
                entry.delay, entry.next_try = self.first, now + self.first
            else:
                del self._entries[addr]
            return 0.0
        wait = entry.delay
        entry.next_try = now + wait
        entry.delay = min(entry.delay * 2, self.cap)
        return wait

    def _prune(self, now: float) -> None:
        stale = [a for a, e in self._entries.items() if not e.bootstrap and now - e.lost_at > self.remember_s]
        for a in stale:
            del self._entries[a]
        extra = len(self._entries) - self.max_entries
        if extra > 0:
            oldest = sorted((e for e in self._entries.values() if not e.bootstrap), key=lambda e: (e.lost_at, e.addr))
            for e in oldest[:extra]:
                del self._entries[e.addr]
