"""The node's ledger service: open the account, pay receipts, claim payments, stake, and judge
whether a requester can pay for the work it offers us (docs/ledger.md has the details).

A thin async shell over :class:`~p2pserve.ledger.store.LedgerStore` (durable state),
:class:`~p2pserve.ledger.sync.LedgerSync` (gossip + pull), the
:class:`~p2pserve.ledger.payqueue.PayQueue` (holds and queued receipts) and the
:class:`~p2pserve.ledger.payers.PayerBook` (what requesters owe us). Only this service
writes to the node's own chain, under one lock, so heights never collide.

* **Sync before write.** Nothing of ours is written before the ledger (our own chain
  included) was pulled from at least one peer, and until then sync answers leave our own
  chain out; a brand-new account with nobody to ask opens after ``open_delay``.
* **Repair, not fork.** A peer holding another block at a height of our own chain makes
  the node log it loudly, drop its blocks from there, adopt the network's and re-queue the
  receipts its dropped pays settled; it never writes a second block at a filled height.
* **Holds, then pay off the request's path.** Serving holds each offer's worst-case price
  (:meth:`hold`); a receipt is paid only through its hold; an unaffordable one is refused.
  Queuing is no block and no await; a writer flushes every ``pay_interval`` (or when one
  executor's queue is full): one ``pay`` block per executor, one durable transaction, then
  gossip; :meth:`run` flushes on the way out (bounded). The unpaid log keeps queued
  receipts across a crash (re-checked once the chain is confirmed).
* **Claim** every payment to us once: at once when sync applies it, and every
  ``claim_interval`` (a safety net).
* **Admit (executor side).** :meth:`admit`: an opened, unfrozen requester whose credit
  covers the worst case plus what it owes us, with nothing overdue.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.crypto import Signer
from p2pserve.duel.ratings import Rating, bradley_terry
from p2pserve.errors import InvalidBlock, LedgerError, P2PServeError
from p2pserve.eventlog import event
from p2pserve.ledger import rules
from p2pserve.ledger.blocks import (
    MAX_RECEIPTS_PER_PAY,
    Block,
    Body,
    ClaimBody,
    Kind,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
    VerdictBody,
    make_block,
)
from p2pserve.ledger.payers import Admission, PayerBook
from p2pserve.ledger.payqueue import Hold, PayQueue
from p2pserve.ledger.state import LedgerState, fingerprint
from p2pserve.ledger.store import LedgerStore
from p2pserve.ledger.sync import LedgerSync
from p2pserve.ledger.unpaid import UNPAID_NAME, UnpaidLog
from p2pserve.transport import Transport
from p2pserve.units import credits
from p2pserve.wire.infer import Receipt
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["Admission", "Hold", "LedgerService"]

log = logging.getLogger(__name__)
_FUNDS = frozenset({"insufficient-funds", "unbonding"})


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
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """``unpaid_log`` defaults to ``unpaid.log`` next to a file store (none in memory);
        ``limits`` bound what sync accepts and sends."""
        if not 1 <= max_receipts_per_pay <= MAX_RECEIPTS_PER_PAY:
            raise ValueError(f"max_receipts_per_pay must be 1-{MAX_RECEIPTS_PER_PAY}")
        self.signer, self.store, self.clock = signer, store, clock
        store.own_account = signer.peer_id
        self.initial_staked = initial_staked
        self.open_delay, self.claim_interval, self.pay_interval = open_delay, claim_interval, pay_interval
        self.max_receipts_per_pay = max_receipts_per_pay
        self.shutdown_flush_timeout = shutdown_flush_timeout
        if unpaid_log is None and store.path != ":memory:":
            unpaid_log = UnpaidLog(Path(store.path).with_name(UNPAID_NAME))
        self.sync = LedgerSync(
            transport, store, now_ms=self.now_ms, limits=limits,
            on_applied=self._on_applied, on_own_conflict=self._on_own_conflict,
        )
        self._lock = trio.Lock()
        self._writable = trio.Event()
        self._opened = trio.Event()
        self._conflicts: list[tuple[list[Block], str]] = []
        self.sync.withhold = self.account  # peers get our own chain only once it is confirmed
        self._nursery: trio.Nursery | None = None
        self._ratings: tuple[int, dict[str, Rating]] | None = None
        self._full = trio.Event()
        self._queued = trio.Event()
        self._claim_wake = trio.Event()
        self.queue = PayQueue(
            signer.peer_id, available=self.available, is_paid=lambda e, r: self.store.state.is_paid(e, r),
            max_receipts_per_pay=max_receipts_per_pay, on_full=lambda: self._full.set(), on_queued=lambda: self._queued.set(),
            unpaid_log=unpaid_log,
        )
        """Holds and receipts waiting for the next pay block."""
        self.payers = PayerBook(signer.peer_id, int(payment_grace_s * 1000))
        """Executor side: what requesters owe us."""
        self.paid = 0  # receipts settled by our pay blocks
        self.claimed = 0  # pay blocks we claimed
        self.repairs = 0  # times our own chain was replaced by the network's

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
        if self.queue.unpaid_log is not None:
            try:
                logged = self.queue.unpaid_log.open()
            except P2PServeError as exc:
                log.warning("unpaid log unusable, queued receipts live in memory only: %s", exc)
                self.queue.unpaid_log = None
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
                if self.queue and self.writable:
                    with trio.move_on_after(self.shutdown_flush_timeout):
                        try:
                            await self.flush()
                        except P2PServeError as exc:
                            log.warning("could not pay queued receipts on shutdown: %s", exc)
                if self.queue:
                    log.warning("%d receipts still unpaid at shutdown (kept in the unpaid log)", self.queued())
                if self.queue.unpaid_log is not None:
                    self.queue.unpaid_log.close()

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
        event(log, "ledger_writable", height=getattr(self.store.state.account(self.account), "height", None))

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
                acct = self.store.state.account(self.account)
                event(log, "account_opened", free=credits(acct.free if acct else 0), staked=credits(self.initial_staked))
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
            if not self.queue:  # nothing to pay: sleep until a receipt is queued
                await self._queued.wait()
            self._queued = trio.Event()
            with trio.move_on_after(self.pay_interval):  # gather more receipts into the same blocks
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
            if self.available() >= r.price:
                self.queue.enqueue(r)
            else:
                self.queue.unpaid += 1
                log.warning("dropping logged receipt %s of %s: price %d is more than the free credit",
                            r.request_id.hex(), r.executor, r.price)
        if logged:
            self.queue.sync_log()

    def _on_applied(self, blocks: list[Block]) -> None:
        """Sync applied network blocks: wake the claimer if one is a pay to us."""
        me = self.account
        state = self.store.state
        for b in blocks:
            if b.kind == Kind.PAY and b.account != me:
                c = state.claimable(b.digest())
                if c is not None and c.payee == me:
                    event(log, "payment_received", payer=b.account, amount=credits(c.amount), block=b.height)
                    self._claim_wake.set()
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
                    if not self.store.state.is_paid(r.executor, r.request_id) and self.available() >= r.price:
                        self.queue.enqueue(r)

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
        return self.queue.hold(amount)

    async def pay(self, receipt: Receipt) -> bool:
        """Queue a verified receipt for payment without a hold (tests, tools); True if queued.

        Receipts of price 0, not addressed to us, already queued or already paid are
        ignored; one the free credit (less what is queued and held) cannot cover is refused."""
        return self.queue.queue_receipt(receipt)

    def queued(self) -> int:
        """Receipts waiting for the next flush."""
        return len(self.queue)

    @property
    def reserved(self) -> int:
        """Micro-credits of queued receipts (not yet in a pay block)."""
        return self.queue.reserved

    @property
    def unpaid(self) -> int:
        """Receipts refused or dropped (over their hold, unaffordable, refused by the ledger)."""
        return self.queue.unpaid

    async def flush(self) -> int:
        """Write pay blocks for every receipt queued now; how many receipts they settle.
        One block per executor (split at ``max_receipts_per_pay`` and MAX_BODY), all in one
        durable transaction, then gossiped. Raises StoreError."""
        await self._writable.wait()
        async with self._lock:
            if not self.queue:
                return 0
            acct = self.store.state.account(self.account)
            if acct is None or acct.frozen:
                return 0
            groups = self.queue.groups(acct.free_at(self._timestamp()))
            if not groups:
                return 0
            blocks = self._chain([PayBody(tuple(g)) for g in groups])
            try:
                n = await self.sync.publish_many(blocks)
                error: InvalidBlock | None = None
            except InvalidBlock as exc:
                n, error = self.sync.stored_prefix(blocks), exc
            settled = 0
            for g, block in zip(groups[:n], blocks, strict=False):
                self.queue.dequeue(g[0].executor, g)
                settled += len(g)
                event(log, "payment_sent", payee=g[0].executor, amount=credits(sum(r.price for r in g)), receipts=len(g),
                      block=block.height)
            self.paid += settled
            if error is not None:
                self._weed(groups[n], error)
            self.queue.sync_log()
            return settled

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
                self.queue.dequeue(r.executor, [r])
                self.queue.unpaid += 1
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
            if n:
                event(log, "claim", payments=n, amount=credits(sum(b.amount for b in bodies[:n] if isinstance(b, ClaimBody))),
                      free=credits(self.free()))
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

    async def verdict(self, body: VerdictBody) -> bytes:
        """Write our verdict on a duel we were drawn to judge (the rules check the draw).
        Raises InvalidBlock or LedgerError."""
        await self.wait_writable(10.0)
        return await self._write(body)

    def ratings(self) -> dict[str, Rating]:
        """Bradley-Terry ratings of every executor with counted verdicts (recomputed only
        when a verdict was applied since the last call)."""
        verdicts = self.store.state.verdicts()
        if self._ratings is None or self._ratings[0] != len(verdicts):
            self._ratings = (len(verdicts), bradley_terry((v.a, v.b, v.outcome) for v in verdicts))
        return self._ratings[1]

    # --- executor side: may this requester offer us work? -----------------------------------

    def admit(self, requester: str, worst_case: int) -> Admission | str:
        """An :class:`~p2pserve.ledger.payers.Admission` for an offer of ``requester`` whose
        worst-case price is ``worst_case``, or the reason to refuse it (module doc). An
        overdue receipt also pulls the requester's chain (its pay's gossip may be lost)."""
        admitted = self.payers.admit(self.store.state, requester, worst_case, self.now_ms())
        if admitted == "unpaid":
            self.sync.request_sync(requester)
        return admitted

    # --- views -----------------------------------------------------------------------------

    @property
    def opened(self) -> bool:
        """Whether this node's account is open on the ledger (a new node's opens once a peer
        has confirmed its chain; until then it can pay nothing)."""
        return self.store.state.account(self.account) is not None

    def free(self) -> int:
        """Free credit on the ledger now (queued pays not deducted; see :meth:`available`)."""
        acct = self.store.state.account(self.account)
        return 0 if acct is None else acct.free_at(self.now_ms())

    def available(self) -> int:
        """Free credit minus what queued receipts will spend and what holds set aside."""
        return self.free() - self.queue.reserved - self.queue.held

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
