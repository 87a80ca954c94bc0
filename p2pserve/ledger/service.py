"""The node's ledger service: open the account, pay receipts, claim payments, stake, and judge
whether a requester can pay for the work it offers us.

A thin async shell over :class:`~p2pserve.ledger.store.LedgerStore` (durable state) and
:class:`~p2pserve.ledger.sync.LedgerSync` (gossip + pull). Only this service writes to the
node's own chain, under one lock, so heights never collide.

* **Sync before write.** No block of ours is written before the node has pulled its peers'
  copy of the ledger (its own chain included) from at least one peer, so a node restarted on
  a stale data dir learns the blocks it forgot instead of writing other blocks at those
  heights; until then its sync answers leave its own chain out, so a stale block of its own
  never reaches a peer that holds the real one. A brand-new node (no block of its own in its store) that finds no peer within
  ``open_delay`` writes its ``open`` anyway: it is the first node of a network. A node with
  blocks of its own waits for a peer however long it takes, saying so in the log.
* **Repair, not fork.** When a peer holds another block at a height of our own chain (a
  stale data dir, or a second process with our key), the node logs it loudly, drops its
  own blocks from that height, adopts the network's, re-queues the receipts its dropped pays
  settled and goes on; it never writes a second block at a height the network has filled.
* **Open.** Once writable, a node whose store does not know its own account writes ``open``
  with ``initial_staked``.
* **Holds, then pay off the request's path.** Before a request is offered to a peer, the
  serving path takes a :class:`Hold` of its worst-case price (:meth:`hold`); a receipt is
  paid only through its hold and only up to it, so a receipt can never cost more than the
  requester agreed, and concurrent offloads can never commit more credit than is free. A
  receipt the node cannot afford is refused, never queued. :meth:`Hold.pay` only queues
  (and appends to the unpaid log): no block, no await. A writer task flushes every
  ``pay_interval`` seconds, or as soon as one executor has ``max_receipts_per_pay``
  receipts queued: one ``pay`` block per executor, all in one durable transaction, then
  gossiped. :meth:`flush` writes everything queued now; :meth:`run` flushes on the way out
  (shielded, at most ``shutdown_flush_timeout`` seconds).
* **Crash window.** A receipt is in the unpaid log from the moment it is queued; a node
  killed before the flush pays it after restart (receipts the ledger shows paid, or that
  the free credit no longer covers, are dropped with a log line). Power loss can lose the
  last seconds of that log (not fsynced; see :mod:`p2pserve.ledger.unpaid`).
* **Claim.** Every payment to us is claimed once: promptly, when sync applies a ``pay`` to
  us, and every ``claim_interval`` for anything else.
* **Admit (executor side).** :meth:`admit` tells the serving path whether to take a peer's
  offer: the requester must have an opened, unfrozen account whose free credit (in our
  view) covers the offer's worst-case price plus what it already owes us (receipts we
  signed and the ledger does not show paid, and other offers of it running here), and no
  receipt of ours to it may be unpaid longer than ``payment_grace_s``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.crypto import Signer
from p2pserve.errors import InvalidBlock, LedgerError, P2PServeError
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
from p2pserve.ledger.state import LedgerState, fingerprint
from p2pserve.ledger.store import LedgerStore
from p2pserve.ledger.sync import LedgerSync
from p2pserve.ledger.unpaid import UNPAID_NAME, UnpaidLog
from p2pserve.transport import Transport
from p2pserve.units import MICRO
from p2pserve.wire.messages import Receipt

__all__ = ["Admission", "Hold", "LedgerService"]

log = logging.getLogger(__name__)
_FUNDS = frozenset({"insufficient-funds", "unbonding"})
_RECEIPT_OVERHEAD = 8
"""Bytes a body spends per receipt beyond the receipt's own encoding (array headers)."""
_MAX_ISSUED = 100_000
"""Most unpaid receipts an executor remembers (oldest forgotten first)."""


class Hold:
    """Credit set aside for one offloaded request: its worst-case price. Pay the receipt
    through it (:meth:`pay`), or :meth:`release` it; both are idempotent, and releasing
    after paying changes nothing."""

    __slots__ = ("_ledger", "amount", "open")

    def __init__(self, ledger: LedgerService, amount: int) -> None:
        self._ledger = ledger
        self.amount = amount
        self.open = True

    def pay(self, receipt: Receipt) -> bool:
        """Queue ``receipt`` for payment if its price is within this hold; True if queued.

        A receipt priced above the hold is refused (logged; the caller records the
        offender). The hold is released either way."""
        if not self.open:
            return False
        self.release()
        if receipt.price > self.amount:
            self._ledger.unpaid += 1
            log.warning(
                "refusing receipt %s of %s: price %d above the %d held for it",
                receipt.request_id.hex(), receipt.executor, receipt.price, self.amount,
            )
            return False
        return self._ledger._queue_receipt(receipt)

    def release(self) -> None:
        if self.open:
            self.open = False
            self._ledger._held -= self.amount


class Admission:
    """A peer's offer we accepted: its worst-case price counts against the requester's credit
    until :meth:`close`; :meth:`issued` records the receipt we signed for it."""

    __slots__ = ("_ledger", "open", "requester", "worst_case")

    def __init__(self, ledger: LedgerService, requester: str, worst_case: int) -> None:
        self._ledger = ledger
        self.requester = requester
        self.worst_case = worst_case
        self.open = True

    def issued(self, receipt: Receipt) -> None:
        if receipt.price > 0:
            self._ledger._issue(receipt)

    def close(self) -> None:
        if self.open:
            self.open = False
            exposure = self._ledger._exposure
            left = exposure.get(self.requester, 0) - self.worst_case
            if left > 0:
                exposure[self.requester] = left
            else:
                exposure.pop(self.requester, None)


class LedgerService:
    """The node's account on the network ledger."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        store: LedgerStore,
        *,
        initial_staked: int = 0,
        clock: Clock = SYSTEM_CLOCK,
        open_delay: float = 1.0,
        claim_interval: float = 1.0,
        pay_interval: float = 0.25,
        max_receipts_per_pay: int = MAX_RECEIPTS_PER_PAY,
        shutdown_flush_timeout: float = 5.0,
        payment_grace_s: float = 60.0,
        unpaid_log: UnpaidLog | None = None,
    ) -> None:
        """``unpaid_log`` defaults to ``unpaid.log`` next to a file store (none in memory)."""
        if not 1 <= max_receipts_per_pay <= MAX_RECEIPTS_PER_PAY:
            raise ValueError(f"max_receipts_per_pay must be 1-{MAX_RECEIPTS_PER_PAY}")
        self.signer = signer
        self.store = store
        store.own_account = signer.peer_id
        self.initial_staked = initial_staked
        self.clock = clock
        self.open_delay = open_delay
        self.claim_interval = claim_interval
        self.pay_interval = pay_interval
        self.max_receipts_per_pay = max_receipts_per_pay
        self.shutdown_flush_timeout = shutdown_flush_timeout
        self.payment_grace_ms = int(payment_grace_s * 1000)
        if unpaid_log is None and store.path != ":memory:":
            unpaid_log = UnpaidLog(Path(store.path).with_name(UNPAID_NAME))
        self.unpaid_log = unpaid_log
        self.sync = LedgerSync(
            transport, store, now_ms=self.now_ms, on_applied=self._on_applied, on_own_conflict=self._on_own_conflict
        )
        self._lock = trio.Lock()
        self._writable = trio.Event()
        self._opened = trio.Event()
        self._conflicts: list[tuple[list[Block], str]] = []
        self.sync.withhold = self.account  # peers get our own chain only once it is confirmed
        self._nursery: trio.Nursery | None = None
        self._queue: dict[str, list[Receipt]] = {}
        """Receipts to pay, per executor, in the order they came."""
        self._queued_keys: set[tuple[str, bytes]] = set()
        self._full = trio.Event()
        self._claim_wake = trio.Event()
        self.reserved = 0
        """Micro-credits of queued receipts (not yet in a pay block)."""
        self._held = 0
        """Micro-credits held for requests offered to peers and not answered yet."""
        self._exposure: dict[str, int] = {}
        """Executor side: worst-case prices of peers' offers running here, per requester."""
        self._issued: dict[tuple[str, bytes], tuple[int, int]] = {}
        """Executor side: (requester, request_id) -> (price, issued at ms) of receipts we
        signed that the ledger does not show paid yet, oldest first."""
        self.paid = 0
        """Receipts settled by our pay blocks."""
        self.claimed = 0
        """Pay blocks we claimed."""
        self.unpaid = 0
        """Receipts refused or dropped (over their hold, unaffordable, or refused by the ledger)."""
        self.repairs = 0
        """Times our own chain was replaced by the network's (see the module doc)."""

    @property
    def account(self) -> str:
        return self.signer.peer_id

    def now_ms(self) -> int:
        return self.clock.wall_ms()

    @property
    def writable(self) -> bool:
        """Whether the node has confirmed its chain head with the network (module doc)."""
        return self._writable.is_set()

    # --- service ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync, open, pay and claim until cancelled; then flush queued pays (bounded)."""
        logged: list[Receipt] = []
        if self.unpaid_log is not None:
            try:
                logged = self.unpaid_log.open()
            except P2PServeError as exc:
                log.warning("unpaid log unusable, queued receipts live in memory only: %s", exc)
                self.unpaid_log = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.sync.run)
                nursery.start_soon(self._confirm_head)
                nursery.start_soon(self._open_then_claim)
                nursery.start_soon(self._pay_loop, logged)
                task_status.started()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                if self._queue and self.writable:
                    with trio.move_on_after(self.shutdown_flush_timeout):
                        try:
                            await self.flush()
                        except P2PServeError as exc:
                            log.warning("could not pay queued receipts on shutdown: %s", exc)
                if self._queue:
                    log.warning("%d receipts still unpaid at shutdown (kept in the unpaid log)", self.queued())
                if self.unpaid_log is not None:
                    self.unpaid_log.close()

    async def _confirm_head(self) -> None:
        """Make the ledger writable once a peer's copy of it (our chain included) is pulled."""
        started = trio.current_time()
        warned = False
        while True:
            peers = sorted(self.sync.transport.connected_peers())[:4]
            if peers and await self.sync.pull_from(peers):
                while self._conflicts:
                    await self._repair(*self._conflicts.pop(0))
                break
            mine = self.store.state.account(self.account)
            waited = trio.current_time() - started
            if not peers and mine is None and waited >= self.open_delay:
                break  # a new account and nobody to ask: the first node of a network
            if mine is not None and not warned and waited >= 10 * self.open_delay:
                warned = True
                log.warning("not writing to the ledger until a peer confirms our chain head (height %d here)", mine.height)
            await trio.sleep(min(1.0, self.open_delay))
        self._writable.set()
        self.sync.withhold = None
        log.info("ledger writable (our height %s)", getattr(self.store.state.account(self.account), "height", None))

    async def wait_writable(self, timeout: float) -> None:
        """Wait until writable; LedgerError after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            await self._writable.wait()
        if not self._writable.is_set():
            raise LedgerError("the ledger is not writable yet: waiting for a peer to confirm this node's chain head")

    async def _open_then_claim(self) -> None:
        await self._writable.wait()
        if self.store.state.account(self.account) is None:
            try:
                await self._write(OpenBody(self.initial_staked))
                log.info("ledger account opened with %d micro-credits staked", self.initial_staked)
            except InvalidBlock as exc:
                log.warning("could not open the ledger account: %s", exc)
        self._opened.set()
        while True:
            await self.claim_all()
            with trio.move_on_after(self.claim_interval):
                await self._claim_wake.wait()
            self._claim_wake = trio.Event()

    async def _pay_loop(self, logged: list[Receipt]) -> None:
        await self._opened.wait()
        self._requeue_logged(logged)
        while True:
            with trio.move_on_after(self.pay_interval):
                await self._full.wait()
            self._full = trio.Event()
            try:
                await self.flush()
            except P2PServeError as exc:  # e.g. the store failed: retry at the next tick
                log.warning("paying queued receipts failed: %s", exc)

    def _requeue_logged(self, logged: list[Receipt]) -> None:
        """Queue again what the unpaid log held at start (now that our chain is confirmed),
        except what the ledger shows paid and what the free credit cannot cover."""
        for r in logged:
            if self.store.state.is_paid(r.executor, r.request_id):
                continue
            if self._affordable(r.price):
                self._enqueue(r)
            else:
                self.unpaid += 1
                log.warning("dropping logged receipt %s of %s: price %d is more than the free credit",
                            r.request_id.hex(), r.executor, r.price)
        if logged and self.unpaid_log is not None:
            self.unpaid_log.rewrite(r for q in self._queue.values() for r in q)

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
        if self.store.rejected_own:
            self._report_own_rejected()

    def _on_own_conflict(self, blocks: list[Block], peer: str) -> None:
        """A peer holds other blocks at heights of our own chain: repair (before we become
        writable, in line with the head check; afterwards in the background)."""
        if not self.writable:
            self._conflicts.append((blocks, peer))
        elif self._nursery is not None:
            self._nursery.start_soon(self._repair, blocks, peer)

    async def _repair(self, theirs: list[Block], peer: str) -> None:
        async with self._lock:
            mine = [b for b in theirs if self.store.state.hash_at(b.account, b.height) not in (None, b.digest())]
            if not mine:
                return
            height = min(b.height for b in mine)
            log.error(
                "LEDGER: %s holds another block of OUR chain at height %d (a stale data dir, or another process "
                "running with our key?); dropping our blocks from height %d and adopting the network's chain",
                peer, height, height,
            )
            dropped = self.store.rollback(self.account, height)
            self.store.ingest(sorted(theirs, key=lambda b: b.height), now_ms=self.now_ms())
            self.repairs += 1
            self._requeue(dropped)
        if self.writable:
            self.sync.request_sync(peer)

    def _requeue(self, dropped: list[Block]) -> None:
        """Queue again the receipts our dropped pay blocks settled, unless paid after all."""
        for b in dropped:
            body = b.decoded_body()
            if isinstance(body, PayBody):
                for r in body.receipts:
                    if not self.store.state.is_paid(r.executor, r.request_id) and self._affordable(r.price):
                        self._enqueue(r)

    def _report_own_rejected(self) -> None:
        for block, reason in self.store.rejected_own:
            log.error("LEDGER: our own block at height %d is no longer valid (%s) after a fork choice changed",
                      block.height, reason)
        self.store.rejected_own.clear()

    async def _write(self, body: Body) -> bytes:
        await self._writable.wait()
        async with self._lock:
            block = rules.next_block(self.signer, self.store.state, body, self._timestamp())
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

    def hold(self, amount: int) -> Hold | None:
        """Set ``amount`` micro-credits aside for one request, or None if they are not free."""
        if amount < 0 or not self._affordable(amount):
            return None
        self._held += amount
        return Hold(self, amount)

    async def pay(self, receipt: Receipt) -> bool:
        """Queue a verified receipt for payment without a hold (tests, tools); True if queued.

        Receipts of price 0, not addressed to us, already queued or already paid are
        ignored; one the free credit (less what is queued and held) cannot cover is refused."""
        return self._queue_receipt(receipt)

    def _queue_receipt(self, receipt: Receipt) -> bool:
        if receipt.price <= 0 or receipt.requester != self.account or receipt.executor == self.account:
            return False
        key = (receipt.executor, receipt.request_id)
        if key in self._queued_keys or self.store.state.is_paid(*key):
            return False
        if not self._affordable(receipt.price):
            self.unpaid += 1
            log.warning("refusing receipt %s of %s: price %d is more than our free credit",
                        receipt.request_id.hex(), receipt.executor, receipt.price)
            return False
        self._enqueue(receipt)
        if self.unpaid_log is not None:
            try:
                self.unpaid_log.append(receipt)
            except P2PServeError as exc:
                log.warning("could not log receipt %s (paid from memory only): %s", receipt.request_id.hex(), exc)
        return True

    def _affordable(self, price: int) -> bool:
        return self.available() >= price

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

    def _dequeue(self, executor: str, receipts: list[Receipt]) -> None:
        """Remove ``receipts`` (queued for ``executor``) from the queue."""
        gone = {id(r) for r in receipts}
        q = [r for r in self._queue[executor] if id(r) not in gone]
        if q:
            self._queue[executor] = q
        else:
            del self._queue[executor]
        for r in receipts:
            self._queued_keys.discard((r.executor, r.request_id))
            self.reserved -= r.price

    def queued(self) -> int:
        """Receipts waiting for the next flush."""
        return sum(len(q) for q in self._queue.values())

    async def flush(self) -> int:
        """Write pay blocks for every receipt queued now; how many receipts they settle.
        One block per executor (split at ``max_receipts_per_pay`` and MAX_BODY), all in one
        durable transaction, then gossiped. Raises StoreError."""
        await self._writable.wait()
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
                self._dequeue(g[0].executor, g)
                settled += len(g)
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
        for r in group:
            try:
                rules.check(self._chain([PayBody((r,))])[0], state)
            except InvalidBlock as exc:
                if exc.reason in _FUNDS:
                    continue
                self._dequeue(r.executor, [r])
                self.unpaid += 1
                log.warning("dropping receipt %s of %s: %s", r.request_id.hex(), r.executor, exc)

    # --- claiming, staking -----------------------------------------------------------------

    async def claim_all(self) -> int:
        """Claim every payment made to us that we have not claimed (one claim block per
        pay, all in one transaction); how many."""
        await self._writable.wait()
        async with self._lock:
            state = self.store.state
            if state.account(self.account) is None:
                return 0
            bodies: list[Body] = [ClaimBody(c.source_account, c.source_height, c.source_hash, c.amount)
                                  for c in state.unclaimed_for(self.account)]
            bodies += self._side_claims(state)
            if not bodies:
                return 0
            blocks = self._chain(bodies)
            try:
                n = await self.sync.publish_many(blocks)
            except (InvalidBlock, P2PServeError) as exc:
                n = self.sync.stored_prefix(blocks)
                log.warning("claim failed after %d of %d: %s", n, len(blocks), exc)
            self.claimed += n
            return n

    def _side_claims(self, state: LedgerState) -> list[ClaimBody]:
        """Pays to us on an equivocator's side branch, not claimed yet: claiming them tells
        every node we relied on that branch (it becomes the one that counts unless another
        payee relied on a heavier one)."""
        out = []
        for acct, h, amount in state.side_pays_to(self.account):
            block = None if state.is_claimed(h) else self.store.side_block(h)
            if block is not None:
                out.append(ClaimBody(acct, block.height, h, amount))
        return out

    async def stake(self, amount: int) -> bytes:
        """Stake ``amount`` micro-credits of free credit. Raises InvalidBlock, or LedgerError
        while the ledger is not writable yet (see the module doc)."""
        await self.wait_writable(10.0)
        return await self._write(StakeBody(amount))

    async def unstake(self, amount: int) -> bytes:
        """Start unbonding ``amount`` staked micro-credits. Raises InvalidBlock or LedgerError."""
        await self.wait_writable(10.0)
        return await self._write(UnstakeBody(amount))

    # --- executor side: may this requester offer us work? -----------------------------------

    def admit(self, requester: str, worst_case: int) -> Admission | str:
        """An :class:`Admission` for an offer of ``requester`` whose worst-case price is
        ``worst_case``, or the reason to refuse it (module doc)."""
        state = self.store.state
        acct = state.account(requester)
        if acct is None:
            return "no-account"
        if acct.frozen:
            return "frozen"
        now = self.now_ms()
        owed, overdue = self._owed_by(requester, now)
        if overdue:
            self.sync.request_sync(requester)  # maybe it paid and the gossip never reached us
            return "unpaid"
        if acct.free_at(now) - owed - self._exposure.get(requester, 0) < worst_case:
            return "no-credit"
        self._exposure[requester] = self._exposure.get(requester, 0) + worst_case
        return Admission(self, requester, worst_case)

    def _issue(self, receipt: Receipt) -> None:
        self._issued[(receipt.requester, receipt.request_id)] = (receipt.price, self.now_ms())
        while len(self._issued) > _MAX_ISSUED:
            del self._issued[next(iter(self._issued))]

    def _owed_by(self, requester: str, now_ms: int) -> tuple[int, bool]:
        """What ``requester`` owes us in receipts the ledger does not show paid, and whether
        one of them is overdue. Forgets the paid ones."""
        state = self.store.state
        owed, overdue, paid = 0, False, []
        for key, (price, at) in self._issued.items():
            if key[0] != requester:
                continue
            if state.is_paid(self.account, key[1]):
                paid.append(key)
                continue
            owed += price
            overdue |= now_ms - at > self.payment_grace_ms
        for key in paid:
            del self._issued[key]
        return owed, overdue

    # --- views -----------------------------------------------------------------------------

    def free(self) -> int:
        """Free credit on the ledger now (queued pays not deducted; see :meth:`available`)."""
        acct = self.store.state.account(self.account)
        return 0 if acct is None else acct.free_at(self.now_ms())

    def available(self) -> int:
        """Free credit minus what queued receipts will spend and what holds set aside."""
        return self.free() - self.reserved - self._held

    def staked(self) -> int:
        acct = self.store.state.account(self.account)
        return 0 if acct is None else acct.staked

    def can_afford(self, price: int) -> bool:
        """Whether free credit, less what is queued and held, covers ``price``."""
        return self.available() >= price

    def stake_of(self, peer_id: str) -> int:
        """Stake on the ledger (0 for unknown or frozen accounts)."""
        return self.store.state.stake_of(peer_id)

    def head(self) -> bytes:
        acct = self.store.state.account(self.account)
        return b"" if acct is None else acct.head

    def fingerprint(self) -> str:
        return fingerprint(self.store.state).hex()

    def summary(self) -> dict[str, Any]:
        acct = self.store.state.account(self.account)
        return {
            "account": self.account,
            "opened": acct is not None,
            "writable": self.writable,
            "height": acct.height if acct else None,
            "free": self.free() / MICRO,
            "staked": self.staked() / MICRO,
            "unbonding": (acct.unbonding_total if acct else 0) / MICRO,
            "frozen": bool(acct and acct.frozen),
            "paid": self.paid,
            "queued": self.queued(),
            "reserved": self.reserved / MICRO,
            "held": self._held / MICRO,
            "claimed": self.claimed,
            "unpaid": self.unpaid,
            "repairs": self.repairs,
            "blocks": self.store.count(),
            "pending": self.store.pending_count(),
            "fingerprint": self.fingerprint(),
        }
