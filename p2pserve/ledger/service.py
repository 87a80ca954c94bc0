"""The node's ledger service: open the account, pay receipts, claim payments, stake.

A thin async shell over :class:`~p2pserve.ledger.store.LedgerStore` (durable state) and
:class:`~p2pserve.ledger.sync.LedgerSync` (gossip + pull). Only this service writes to the
node's own chain, under one lock, so heights never collide.

* **Open.** An account is opened once per key, network-wide. A node whose store does not
  know its own account first waits ``open_delay`` for sync (so a known key on a fresh data
  dir learns its chain instead of forking it), then writes ``open`` with ``initial_staked``.
* **Pay, off the request's path.** :meth:`pay` only queues a verified receipt (and appends
  it to the unpaid log, one ``write()``, when the store is a file): no block, no commit, no
  await. ``reserved`` counts what is queued, so :meth:`can_afford` is free − reserved. A
  writer task flushes every ``pay_interval`` seconds, or as soon as one executor has
  ``max_receipts_per_pay`` receipts queued: one ``pay`` block per executor (more if the
  limits split it), all in one durable transaction, then gossiped. Receipts the free credit
  does not cover yet stay queued (in order) until claims bring credit. :meth:`flush`
  writes everything queued now; :meth:`run` flushes on the way out (shielded, at most
  ``shutdown_flush_timeout`` seconds), so a clean stop pays what it owes.
* **Crash window.** A receipt is in the unpaid log from the moment it is queued; a node
  killed before the flush pays it after restart (receipts the ledger shows paid are
  dropped). Power loss can lose the last seconds of that log (not fsynced; see
  :mod:`p2pserve.ledger.unpaid`). An in-memory store has no log.
* **Claim.** Every payment to us is claimed once: promptly, when sync applies a ``pay`` to
  us (one claim block per pay block, a batch of them in one transaction), and every
  ``claim_interval`` for anything else (verdict awards, misses).
* **Afford.** :meth:`can_afford` tells the serving path whether free credit minus what is
  queued covers a price; a node that cannot afford peers serves its users locally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2pserve.crypto import Signer
from p2pserve.errors import InvalidBlock, P2PServeError
from p2pserve.ledger import rules
from p2pserve.ledger.blocks import (
    MAX_BODY,
    MAX_RECEIPTS_PER_PAY,
    Block,
    Body,
    ClaimBody,
    Kind,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
    make_block,
)
from p2pserve.config import MICRO
from p2pserve.ledger.rules import fingerprint, next_block
from p2pserve.ledger.store import LedgerStore
from p2pserve.ledger.sync import LedgerSync
from p2pserve.ledger.unpaid import UNPAID_NAME, UnpaidLog
from p2pserve.transport import Transport
from p2pserve.wire.messages import Receipt

__all__ = ["LedgerService"]

log = logging.getLogger(__name__)
_FUNDS = frozenset({"insufficient-funds", "unbonding"})
_RECEIPT_OVERHEAD = 8
"""Bytes a body spends per receipt beyond the receipt's own encoding (array headers)."""


class LedgerService:
    """The node's account on the network ledger."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        store: LedgerStore,
        *,
        initial_staked: int = 0,
        wall_clock: Callable[[], float] = time.time,
        open_delay: float = 1.0,
        claim_interval: float = 1.0,
        pay_interval: float = 0.25,
        max_receipts_per_pay: int = MAX_RECEIPTS_PER_PAY,
        shutdown_flush_timeout: float = 5.0,
        unpaid_log: UnpaidLog | None = None,
    ) -> None:
        """``unpaid_log`` defaults to ``unpaid.log`` next to a file store (none in memory)."""
        if not 1 <= max_receipts_per_pay <= MAX_RECEIPTS_PER_PAY:
            raise ValueError(f"max_receipts_per_pay must be 1-{MAX_RECEIPTS_PER_PAY}")
        self.signer = signer
        self.store = store
        self.initial_staked = initial_staked
        self.wall_clock = wall_clock
        self.open_delay = open_delay
        self.claim_interval = claim_interval
        self.pay_interval = pay_interval
        self.max_receipts_per_pay = max_receipts_per_pay
        self.shutdown_flush_timeout = shutdown_flush_timeout
        if unpaid_log is None and store.path != ":memory:":
            unpaid_log = UnpaidLog(Path(store.path).with_name(UNPAID_NAME))
        self.unpaid_log = unpaid_log
        self.sync = LedgerSync(transport, store, now_ms=self.now_ms, on_applied=self._on_applied)
        self._lock = trio.Lock()
        self._queue: dict[str, list[Receipt]] = {}
        """Receipts to pay, per executor, in the order they came."""
        self._queued_keys: set[tuple[str, bytes]] = set()
        self._full = trio.Event()
        self._claim_wake = trio.Event()
        self.reserved = 0
        """Micro-credits queued for payment (not yet in a pay block)."""
        self.paid = 0
        """Receipts settled by our pay blocks."""
        self.claimed = 0
        """Pay blocks (and awards) we claimed."""
        self.unpaid = 0
        """Receipts dropped because the ledger refuses them (never expected: they were verified)."""

    @property
    def account(self) -> str:
        return self.signer.peer_id

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    # --- service ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync, open, pay and claim until cancelled; then flush queued pays (bounded)."""
        if self.unpaid_log is not None:
            try:
                for r in self.unpaid_log.open():
                    self._enqueue(r)
            except P2PServeError as exc:
                log.warning("unpaid log unusable, queued receipts live in memory only: %s", exc)
                self.unpaid_log = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.sync.run)
                nursery.start_soon(self._open_then_claim)
                nursery.start_soon(self._pay_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                if self._queue:
                    with trio.move_on_after(self.shutdown_flush_timeout):
                        try:
                            await self.flush()
                        except P2PServeError as exc:
                            log.warning("could not pay queued receipts on shutdown: %s", exc)
                    if self._queue:
                        log.warning("%d receipts still unpaid at shutdown (kept in the unpaid log)", self.queued())
                if self.unpaid_log is not None:
                    self.unpaid_log.close()

    async def _open_then_claim(self) -> None:
        if self.store.state.account(self.account) is None:
            await trio.sleep(self.open_delay)
            if self.store.state.account(self.account) is None:
                try:
                    await self._write(OpenBody(self.initial_staked))
                    log.info("ledger account opened with %d micro-credits staked", self.initial_staked)
                except InvalidBlock as exc:
                    log.warning("could not open the ledger account: %s", exc)
        while True:
            await self.claim_all()
            with trio.move_on_after(self.claim_interval):
                await self._claim_wake.wait()
            self._claim_wake = trio.Event()

    async def _pay_loop(self) -> None:
        while True:
            with trio.move_on_after(self.pay_interval):
                await self._full.wait()
            self._full = trio.Event()
            try:
                await self.flush()
            except P2PServeError as exc:  # e.g. the store failed: retry at the next tick
                log.warning("paying queued receipts failed: %s", exc)

    def _on_applied(self, blocks: list[Block]) -> None:
        """Sync applied network blocks: wake the claimer if one is a pay to us."""
        me = self.account
        state = self.store.state
        for b in blocks:
            if b.kind == Kind.PAY and b.account != me:
                c = state.claimable(b.digest())
                if c is not None and c.payee == me:
                    self._claim_wake.set()
                    return

    async def _write(self, body: Body) -> bytes:
        async with self._lock:
            block = next_block(self.signer, self.store.state, body, self._timestamp())
            return await self.sync.publish(block)

    def _timestamp(self) -> int:
        """Now, but never before our chain's head (timestamps must not decrease)."""
        acct = self.store.state.account(self.account)
        return max(self.now_ms(), acct.timestamp_ms if acct else 0)

    def _chain(self, bodies: list[Body]) -> list[Block]:
        """Blocks extending our chain with ``bodies``, in order (not stored)."""
        acct = self.store.state.account(self.account)
        assert acct is not None
        height, prev, ts = acct.height, acct.head, self._timestamp()
        out = []
        for body in bodies:
            height += 1
            b = make_block(
                self.signer, network_id=self.store.params.network_id, height=height, prev=prev, body=body, timestamp_ms=ts
            )
            prev = b.digest()
            out.append(b)
        return out

    # --- paying ----------------------------------------------------------------------------

    async def pay(self, receipt: Receipt) -> None:
        """Queue a verified receipt for payment; returns at once (no block, no await).

        Receipts of price 0, not addressed to us, already queued or already paid are
        ignored. The pay writer settles the queue (see the module doc).
        """
        if receipt.price <= 0 or receipt.requester != self.account or receipt.executor == self.account:
            return
        if not self._enqueue(receipt):
            return
        if self.unpaid_log is not None:
            try:
                self.unpaid_log.append(receipt)
            except P2PServeError as exc:
                log.warning("could not log receipt %s (paid from memory only): %s", receipt.request_id.hex(), exc)

    def _enqueue(self, r: Receipt) -> bool:
        key = (r.executor, r.request_id)
        if key in self._queued_keys or self.store.state.is_paid(*key):
            return False
        q = self._queue.setdefault(r.executor, [])
        q.append(r)
        self._queued_keys.add(key)
        self.reserved += r.price
        if len(q) >= self.max_receipts_per_pay:
            self._full.set()
        return True

    def _dequeue(self, executor: str, n: int) -> list[Receipt]:
        """Remove the first ``n`` receipts queued for ``executor``."""
        q = self._queue[executor]
        gone, q[:n] = q[:n], []
        if not q:
            del self._queue[executor]
        for r in gone:
            self._queued_keys.discard((r.executor, r.request_id))
            self.reserved -= r.price
        return gone

    def queued(self) -> int:
        """Receipts waiting for the next flush."""
        return sum(len(q) for q in self._queue.values())

    async def flush(self) -> int:
        """Write pay blocks for every receipt queued now that free credit covers; how many
        receipts they settle. One block per executor (split at ``max_receipts_per_pay`` and
        MAX_BODY), all in one durable transaction, then gossiped. Raises StoreError."""
        async with self._lock:
            if not self._queue:
                return 0
            acct = self.store.state.account(self.account)
            if acct is None or acct.frozen:
                return 0
            groups = self._groups(acct.free_at(self._timestamp()))
            if not groups:
                return 0
            blocks = self._chain([PayBody(tuple(g)) for g in groups])
            try:
                n = await self.sync.publish_many(blocks)
                error: InvalidBlock | None = None
            except InvalidBlock as exc:
                n, error = self.sync.stored_prefix(blocks), exc
            settled = 0
            for g in groups[:n]:
                settled += len(self._dequeue(g[0].executor, len(g)))
            self.paid += settled
            if error is not None:
                self._weed(groups[n], error)
            if self.unpaid_log is not None:
                self.unpaid_log.rewrite(r for q in self._queue.values() for r in q)
            return settled

    def _groups(self, free: int) -> list[list[Receipt]]:
        """The queued receipts ``free`` covers, per executor in queue order, split into
        groups that each fit one pay body."""
        groups: list[list[Receipt]] = []
        for q in self._queue.values():
            group: list[Receipt] = []
            size = 0
            for r in q:
                if r.price > free:
                    break  # this executor's later receipts wait too: pay in order
                n = len(r.encode()) + _RECEIPT_OVERHEAD
                if len(group) >= self.max_receipts_per_pay or size + n > MAX_BODY - 16:
                    groups.append(group)
                    group, size = [], 0
                group.append(r)
                size += n
                free -= r.price
            if group:
                groups.append(group)
        return groups

    def _weed(self, group: list[Receipt], error: InvalidBlock) -> None:
        """A pay block was refused. Funds: keep its receipts queued. Otherwise drop each
        receipt the ledger refuses alone (the rest go in the next flush)."""
        if error.reason in _FUNDS:
            return
        log.warning("pay block refused (%s); checking its %d receipts one by one", error, len(group))
        state = self.store.state
        for r in list(group):
            try:
                rules.check(self._chain([PayBody((r,))])[0], state)
            except InvalidBlock as exc:
                if exc.reason in _FUNDS:
                    continue
                q = self._queue[r.executor]
                q.remove(r)
                if not q:
                    del self._queue[r.executor]
                self._queued_keys.discard((r.executor, r.request_id))
                self.reserved -= r.price
                self.unpaid += 1
                log.warning("dropping receipt %s of %s: %s", r.request_id.hex(), r.executor, exc)

    # --- claiming, staking -----------------------------------------------------------------

    async def claim_all(self) -> int:
        """Claim every payment made to us that we have not claimed (one claim block per
        pay or award, all in one transaction); how many."""
        async with self._lock:
            if self.store.state.account(self.account) is None:
                return 0
            owed = self.store.state.unclaimed_for(self.account)
            if not owed:
                return 0
            blocks = self._chain([ClaimBody(c.source_account, c.source_height, c.source_hash, c.amount) for c in owed])
            try:
                n = await self.sync.publish_many(blocks)
            except (InvalidBlock, P2PServeError) as exc:
                n = self.sync.stored_prefix(blocks)
                log.warning("claim failed after %d of %d: %s", n, len(blocks), exc)
            self.claimed += n
            return n

    async def stake(self, amount: int) -> bytes:
        """Stake ``amount`` micro-credits of free credit. Raises InvalidBlock."""
        return await self._write(StakeBody(amount))

    async def unstake(self, amount: int) -> bytes:
        """Start unbonding ``amount`` staked micro-credits. Raises InvalidBlock."""
        return await self._write(UnstakeBody(amount))

    # --- views -----------------------------------------------------------------------------

    def free(self) -> int:
        """Free credit on the ledger now (queued pays not deducted; see :meth:`available`)."""
        acct = self.store.state.account(self.account)
        return 0 if acct is None else acct.free_at(self.now_ms())

    def available(self) -> int:
        """Free credit minus what queued receipts will spend."""
        return self.free() - self.reserved

    def staked(self) -> int:
        acct = self.store.state.account(self.account)
        return 0 if acct is None else acct.staked

    def can_afford(self, price: int) -> bool:
        """Whether free credit, less what is queued for payment, covers ``price``."""
        return self.available() >= price

    def stake_of(self, peer_id: str) -> int:
        """Stake on the ledger (0 for unknown or frozen accounts)."""
        return self.store.state.stake_of(peer_id)

    def head(self) -> bytes:
        acct = self.store.state.account(self.account)
        return b"" if acct is None else acct.head

    def summary(self) -> dict[str, Any]:
        acct = self.store.state.account(self.account)
        return {
            "account": self.account,
            "opened": acct is not None,
            "height": acct.height if acct else None,
            "free": self.free() / MICRO,
            "staked": self.staked() / MICRO,
            "unbonding": (acct.unbonding_total if acct else 0) / MICRO,
            "frozen": bool(acct and acct.frozen),
            "paid": self.paid,
            "queued": self.queued(),
            "reserved": self.reserved / MICRO,
            "claimed": self.claimed,
            "unpaid": self.unpaid,
            "blocks": self.store.count(),
            "pending": self.store.pending_count(),
            "fingerprint": fingerprint(self.store.state).hex(),
        }
