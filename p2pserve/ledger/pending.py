"""Blocks from the network that cannot apply *yet*, indexed by what each one waits for.

Pure: no I/O; time is an argument. A block waits on one key:

* ``("h", account, height)``: its predecessor, the block of ``account`` at ``height``;
* ``("p", source_hash)``: the payment its claim cites;
* ``("t",)``: time (dated ahead of the receiver's clock, or unbonding not yet released by
  the receiver's own clock); retried by the owner's timer.

Applying a block wakes exactly the blocks waiting on it (:meth:`PendingPool.take`), so the
cost per applied block does not grow with the number of waiting blocks. Bounds: at most
``max_per_account`` blocks of one account (a flood from one key evicts only that key's
oldest) and ``max_total`` in all (then the oldest overall go); an entry older than
``ttl_ms`` is dropped by :meth:`expire`. Nothing is kept across restarts: sync fetches what
is missing again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from p2pserve.ledger.blocks import ClaimBody, NetworkParams
from p2pserve.ledger.rules import Prepared
from p2pserve.ledger.state import LedgerState

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PENDING_PER_ACCOUNT",
    "DEFAULT_PENDING_TTL_MS",
    "TIME_KEY",
    "PendingPool",
    "UnstakeWatch",
]

DEFAULT_MAX_PENDING = 4096
DEFAULT_MAX_PENDING_PER_ACCOUNT = 256
DEFAULT_PENDING_TTL_MS = 10 * 60_000
TIME_KEY: tuple[object, ...] = ("t",)

Key = tuple[object, ...]


@dataclass(slots=True)
class _Entry:
    prepared: Prepared
    key: Key
    received_ms: int


class PendingPool:
    """Waiting blocks by key, bounded per account and in total, expiring (module docstring)."""

    def __init__(
        self,
        *,
        max_total: int = DEFAULT_MAX_PENDING,
        max_per_account: int = DEFAULT_MAX_PENDING_PER_ACCOUNT,
        ttl_ms: int = DEFAULT_PENDING_TTL_MS,
    ) -> None:
        self.max_total = max_total
        self.max_per_account = max_per_account
        self.ttl_ms = ttl_ms
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        """By block hash, oldest first."""
        self._by_key: dict[Key, dict[bytes, None]] = {}
        self._by_account: dict[str, OrderedDict[bytes, None]] = {}
        self.evicted = 0
        """Entries dropped by a bound or by expiry (for metrics)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._entries

    def add(self, p: Prepared, key: Key, received_ms: int) -> None:
        """Keep ``p`` until ``key`` is resolved (replacing its earlier entry, if any)."""
        self._remove(p.hash)
        account = p.block.account
        per = self._by_account.setdefault(account, OrderedDict())
        while len(per) >= self.max_per_account:
            self._remove(next(iter(per)))
            self.evicted += 1
        while len(self._entries) >= self.max_total:
            self._remove(next(iter(self._entries)))
            self.evicted += 1
        self._entries[p.hash] = _Entry(p, key, received_ms)
        self._by_key.setdefault(key, {})[p.hash] = None
        self._by_account.setdefault(account, OrderedDict())[p.hash] = None

    def take(self, key: Key) -> list[Prepared]:
        """Remove and return the blocks waiting on ``key`` (in arrival order)."""
        hashes = self._by_key.pop(key, None)
        if not hashes:
            return []
        out = []
        for h in hashes:
            e = self._entries.pop(h)
            self._unindex_account(e.prepared.block.account, h)
            out.append(e.prepared)
        return out

    def take_timed(self) -> list[Prepared]:
        """Remove and return every block waiting for time (the caller retries them)."""
        return self.take(TIME_KEY)

    def expire(self, now_ms: int) -> int:
        """Drop entries received more than ``ttl_ms`` before ``now_ms``; how many."""
        n = 0
        while self._entries:
            h, e = next(iter(self._entries.items()))
            if now_ms - e.received_ms <= self.ttl_ms:
                break
            self._remove(h)
            n += 1
        self.evicted += n
        return n

    def blocks(self) -> list[Prepared]:
        """Every waiting block, oldest first."""
        return [e.prepared for e in self._entries.values()]

    def waits(self) -> list[tuple[Prepared, Key]]:
        """``(block, key)`` of every waiting block, oldest first."""
        return [(e.prepared, e.key) for e in self._entries.values()]

    def keys(self) -> list[Key]:
        """Every key some block waits on."""
        return list(self._by_key)

    def wanted_payments(self) -> list[bytes]:
        """Hashes of the payments waiting claims cite (to ask peers for them by hash)."""
        return [k[1] for k in self._by_key if k[0] == "p" and isinstance(k[1], bytes)]

    def missing(self, state: LedgerState) -> dict[str, int]:
        """``account -> lowest height wanted`` for the chains waiting blocks need."""
        out: dict[str, int] = {}

        def want(account: str, height: int) -> None:
            head = state.account(account)
            lowest = 0 if head is None else head.height + 1
            if height >= lowest:
                out[account] = min(out.get(account, lowest), lowest)

        for e in self._entries.values():
            body = e.prepared.body
            if e.key[0] == "h":
                want(e.prepared.block.account, e.prepared.block.height)
            elif e.key[0] == "p" and isinstance(body, ClaimBody):
                want(body.source_account, body.source_height)
        return out

    def clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()
        self._by_account.clear()

    def _remove(self, h: bytes) -> None:
        e = self._entries.pop(h, None)
        if e is None:
            return
        keyed = self._by_key.get(e.key)
        if keyed is not None:
            keyed.pop(h, None)
            if not keyed:
                del self._by_key[e.key]
        self._unindex_account(e.prepared.block.account, h)

    def _unindex_account(self, account: str, h: bytes) -> None:
        per = self._by_account.get(account)
        if per is not None:
            per.pop(h, None)
            if not per:
                del self._by_account[account]


class UnstakeWatch:
    """When this node first saw back-dated unstakes, to hold their release to its own clock.

    An honest unstake reaches a live node within the skew of its timestamp. One dated further
    back is either dated back on purpose (to shorten unbonding) or one this node missed while
    catching up. A node online for longer than the delay would not have missed it, so it
    releases such an unstake only ``unbonding_delay_ms`` after it first saw it
    (:meth:`not_before`, used by the rules' ``unbonding-wait``); a node still catching up
    does not (it would otherwise lag the network by the delay). In memory only.
    """

    def __init__(self, params: NetworkParams) -> None:
        self.params = params
        self.online_since: int | None = None
        """Our clock at the first block we took from the network."""
        self._seen: dict[bytes, int] = {}

    def seen(self, unstake: bytes, timestamp_ms: int, now_ms: int) -> None:
        """An unstake block was applied now (with our clock ``now_ms``)."""
        if self.online_since is None:
            self.online_since = now_ms
        p = self.params
        grown_up = now_ms - self.online_since > p.unbonding_delay_ms + p.max_clock_skew_ms
        if grown_up and timestamp_ms < now_ms - p.max_clock_skew_ms:
            self._seen[unstake] = now_ms

    def applied(self, now_ms: int) -> None:
        """Any block was applied now (starts the online period)."""
        if self.online_since is None:
            self.online_since = now_ms

    def not_before(self, unstake: bytes) -> int | None:
        """Our own earliest release of an unstake (None: the rules' own release applies)."""
        seen = self._seen.get(unstake)
        return None if seen is None else seen + self.params.unbonding_delay_ms
