"""The node's ledger service: open the account, pay receipts, claim payments, stake.

A thin async shell over :class:`~p2pserve.ledger.store.LedgerStore` (durable state) and
:class:`~p2pserve.ledger.sync.LedgerSync` (gossip + pull). Only this service writes to the
node's own chain, one block at a time under a lock, so heights never collide.

* **Open.** An account is opened once per key, network-wide. A node whose store does not
  know its own account first waits ``open_delay`` for sync (so a known key on a fresh data
  dir learns its chain instead of forking it), then writes ``open`` with ``initial_staked``.
* **Pay.** After an offloaded request, :meth:`pay` writes a ``pay`` block embedding the
  executor's signed receipt (skipped when the price is 0: nothing is owed).
* **Claim.** Every ``claim_interval`` the service claims whatever peers have paid it.
* **Afford.** :meth:`can_afford` tells the serving path whether our free credit covers a
  price; a node that cannot afford peers serves its users locally (and says so in status).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from p2pserve.crypto import Signer
from p2pserve.errors import InvalidBlock, P2PServeError
from p2pserve.ledger.blocks import ClaimBody, OpenBody, PayBody, StakeBody, UnstakeBody
from p2pserve.ledger.rules import fingerprint, next_block
from p2pserve.ledger.store import LedgerStore
from p2pserve.ledger.sync import LedgerSync
from p2pserve.transport import Transport
from p2pserve.wire.messages import Receipt

__all__ = ["LedgerService"]

log = logging.getLogger(__name__)
MICRO = 1_000_000


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
    ) -> None:
        self.signer = signer
        self.store = store
        self.initial_staked = initial_staked
        self.wall_clock = wall_clock
        self.open_delay = open_delay
        self.claim_interval = claim_interval
        self.sync = LedgerSync(transport, store, now_ms=self.now_ms)
        self._lock = trio.Lock()
        self.paid = 0
        self.claimed = 0
        self.unpaid = 0
        """Receipts we could not pay (e.g. credit ran out between the check and the pay)."""

    @property
    def account(self) -> str:
        return self.signer.peer_id

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    # --- service ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sync.run)
            nursery.start_soon(self._open_then_claim)
            task_status.started()

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
            await trio.sleep(self.claim_interval)

    async def _write(self, body: Any) -> bytes:
        async with self._lock:
            block = next_block(self.signer, self.store.state, body, self.now_ms())
            return await self.sync.publish(block)

    # --- operations ------------------------------------------------------------------------

    async def pay(self, receipt: Receipt) -> None:
        """Pay an executor for a verified receipt (no block when the price is 0)."""
        if receipt.price <= 0 or receipt.requester != self.account:
            return
        try:
            await self._write(PayBody(receipt))
            self.paid += 1
        except (InvalidBlock, P2PServeError) as exc:
            self.unpaid += 1
            log.warning("could not pay %s for request %s: %s", receipt.executor, receipt.request_id.hex(), exc)

    async def claim_all(self) -> int:
        """Claim every payment made to us that we have not claimed; how many."""
        n = 0
        for c in self.store.state.unclaimed_for(self.account):
            try:
                await self._write(ClaimBody(c.source_account, c.source_height, c.source_hash, c.amount))
                n += 1
            except (InvalidBlock, P2PServeError) as exc:
                log.warning("claim of %s/%d failed: %s", c.source_account, c.source_height, exc)
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
        acct = self.store.state.account(self.account)
        return 0 if acct is None else acct.free_at(self.now_ms())

    def staked(self) -> int:
        acct = self.store.state.account(self.account)
        return 0 if acct is None else acct.staked

    def can_afford(self, price: int) -> bool:
        return self.free() >= price

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
            "claimed": self.claimed,
            "unpaid": self.unpaid,
            "blocks": self.store.count(),
            "pending": self.store.pending_count(),
            "fingerprint": fingerprint(self.store.state).hex(),
        }
