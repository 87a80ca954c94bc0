"""The rules of each block kind (open, stake, unstake, pay, claim, verdict): what it needs
and what it changes, given the account's head after the chain checks. Pure; called by
:func:`p2pserve.ledger.rules.plan`, one planner per body class (:data:`PLANNERS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pserve.crypto import sha256, verify_by_peer_id
from p2pserve.duel.draw import draw_judges
from p2pserve.errors import BadSignature, MalformedMessage
from p2pserve.ledger.blocks import ClaimBody, OpenBody, PayBody, StakeBody, UnstakeBody, VerdictBody
from p2pserve.ledger.prepared import Plan, Prepared, fail
from p2pserve.ledger.state import LedgerState, Unbonding, VerdictRecord, _Acct, _Core
from p2pserve.units import format_credits
from p2pserve.wire.infer import Receipt

__all__ = ["PLANNERS", "Ctx", "plan_open", "release"]


def _verify_receipt(r: Receipt, signing_bytes: bytes, verify: bool) -> None:
    if verify:
        try:
            verify_by_peer_id(r.executor, signing_bytes, r.signature)
        except (BadSignature, MalformedMessage) as exc:
            raise fail("bad-receipt", f"receipt signature: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a kind's planner needs: the block, the state, the account after unbonding
    releases due by the block's timestamp."""

    p: Prepared
    state: LedgerState
    acct: _Acct
    free: int
    unbonding: tuple[Unbonding, ...]
    verify: bool

    def spend(self, amount: int) -> int:
        """Free credit left after spending ``amount``; raises when it is not there."""
        if amount <= 0:
            raise fail("bad-amount", f"{amount}")
        if self.free < amount:
            if self.free + sum(u.amount for u in self.unbonding) >= amount:
                raise fail("unbonding", f"needs {format_credits(amount)} credits, {format_credits(self.free)} free, the rest unbonding")
            raise fail("insufficient-funds", f"needs {format_credits(amount)} credits, has {format_credits(self.free)} free")
        return self.free - amount

    def head(self, free: int, staked: int, unbonding: tuple[Unbonding, ...]) -> _Acct:
        b = self.p.block
        return _Acct(b.height, self.p.hash, b.timestamp_ms, free, staked, unbonding)

    def plan(self, acct: _Acct, **effects: object) -> Plan:
        return Plan(self.p, self.state.core.version, acct, **effects)  # type: ignore[arg-type]


def plan_open(p: Prepared, body: OpenBody, state: LedgerState) -> Plan:
    params = state.params
    limit = min(params.initial_credit, params.max_initial_staked)
    if body.initial_staked > limit:
        raise fail("bad-open", f"initial_staked {body.initial_staked} above {limit}")
    new = _Acct(0, p.hash, p.block.timestamp_ms, params.initial_credit - body.initial_staked, body.initial_staked, ())
    return Plan(p, state.core.version, new, minted=params.initial_credit)


def _plan_stake(x: Ctx, body: StakeBody) -> Plan:
    return x.plan(x.head(x.spend(body.amount), x.acct.staked + body.amount, x.unbonding))


def _plan_unstake(x: Ctx, body: UnstakeBody) -> Plan:
    if body.amount <= 0:
        raise fail("bad-amount", f"{body.amount}")
    if x.acct.staked < body.amount:
        raise fail("insufficient-stake", f"unstakes {format_credits(body.amount)} credits, has {format_credits(x.acct.staked)} staked")
    params = x.state.params
    entry = Unbonding(x.p.block.timestamp_ms + params.unbonding_delay_ms + params.max_clock_skew_ms, body.amount, x.p.hash)
    return x.plan(x.head(x.free, x.acct.staked - body.amount, (*x.unbonding, entry)))


def _plan_verdict(x: Ctx, body: VerdictBody) -> Plan:
    """A judge's verdict: structure and parties first, then the draw, then signatures."""
    b = x.p.block
    order = body.order
    judge = b.account
    if order.network_id != b.network_id:
        raise fail("bad-verdict", "the order belongs to another network")
    if judge in order.parties:
        raise fail("judge-is-party", f"{judge} is the requester or an executor of this duel")
    order_id = sha256(x.p.receipt_signing_bytes[2])  # order.digest(), from its own bytes
    if judge not in draw_judges(order_id, [(c.peer_id, c.stake) for c in order.candidates], order.judges, order.parties):
        raise fail("not-drawn", f"{judge} is not a judge this order draws")
    penalty = 0 if body.outcome == "tie" else x.state.params.duel_penalty // order.judges
    if body.penalty != penalty:
        raise fail("bad-verdict", f"penalty must be {penalty}")
    if x.state.has_verdict(order_id, judge):
        raise fail("duplicate-verdict", f"{judge} already judged order {order_id.hex()[:16]}")
    if x.verify:
        sb = x.p.receipt_signing_bytes
        try:
            verify_by_peer_id(order.requester, sb[2], order.signature)
        except (BadSignature, MalformedMessage) as exc:
            raise fail("bad-order", f"the requester's signature: {exc}") from exc
        for r, rsb in zip(order.receipts, sb[:2], strict=True):
            _verify_receipt(r, rsb, True)
    a, bx = order.executors
    keys = ((a, order.receipts[0].request_id), (bx, order.receipts[1].request_id))
    record = VerdictRecord(order_id, judge, a, bx, body.outcome, penalty, keys)
    return x.plan(x.head(x.free, x.acct.staked, x.unbonding), verdict=record)


def release(
    acct: _Acct, ts: int, now_ms: int | None, not_before: Callable[[bytes], int | None] | None
) -> tuple[int, tuple[Unbonding, ...]]:
    """``(free, unbonding)`` once the unbonding entries due by ``ts`` are released.

    With the receiver's clock, an entry due by ``ts`` but not yet released by the
    receiver's own ``not_before`` makes the block wait (``unbonding-wait``)."""
    free, unbonding = acct.free, acct.unbonding
    due = [u for u in unbonding if u.release_ms <= ts]
    if not due:
        return free, unbonding
    if now_ms is not None and not_before is not None:
        for u in due:
            nb = not_before(u.unstake)
            if nb is not None and now_ms < nb:
                raise fail("unbonding-wait", f"the unstake {u.unstake.hex()[:16]} was first seen here too recently")
    return free + sum(u.amount for u in due), tuple(u for u in unbonding if u.release_ms > ts)


def _plan_claim(x: Ctx, body: ClaimBody) -> Plan:
    b = x.p.block
    c = x.state.core
    src = c.claimables.get(body.source_hash)
    if src is None:
        if body.source_hash in c.claimed or body.source_hash in c.voided:
            raise fail("double-claim", body.source_hash.hex())
        fork = c.forks.get(body.source_account)
        side = fork.side.get(body.source_hash) if fork is not None else None
        if side is None:
            raise fail("unknown-pay", body.source_hash.hex())
        payee, amount = side
        if payee != b.account:
            raise fail("wrong-payee", f"the payment is to {payee}")
        if amount != body.amount:
            raise fail("bad-claim", "the amount differs from the cited payment")
        # a claim of a side-branch pay of an equivocator: valid, credits nothing
        return x.plan(x.head(x.free, x.acct.staked, x.unbonding), void=body.source_hash)
    if src.payee != b.account:
        raise fail("wrong-payee", f"the payment is to {src.payee}")
    if (src.source_account, src.source_height, src.amount) != (body.source_account, body.source_height, body.amount):
        raise fail("bad-claim", "account, height or amount differ from the cited payment")
    return x.plan(x.head(x.free + src.amount, x.acct.staked, x.unbonding), claim=body.source_hash)


def _pay_amount(body: PayBody, c: _Core, network_id: str, payer: str) -> int:
    """Check a pay's receipts without signatures (cheap checks first); their price sum."""
    payee = body.payee
    seen: set[bytes] = set()
    total = 0
    for r in body.receipts:
        if r.executor != payee:
            raise fail("mixed-payees", f"receipts from {payee} and {r.executor}")
        if r.network_id != network_id or r.requester != payer or r.executor == payer:
            raise fail("bad-receipt", "each receipt must be for this network, from another executor, to this payer")
        if r.price <= 0:
            raise fail("bad-amount", f"receipt price {r.price} (a zero-price receipt needs no pay)")
        if r.request_id in seen or (r.executor, r.request_id) in c.paid:
            raise fail("duplicate-pay", f"receipt for request {r.request_id.hex()} by {r.executor}")
        seen.add(r.request_id)
        total += r.price
    return total


def _plan_pay(x: Ctx, body: PayBody) -> Plan:
    """A pay: cheap checks of its receipts first, then funds, then every receipt's signature."""
    b = x.p.block
    amount = _pay_amount(body, x.state.core, b.network_id, b.account)
    free_after = x.spend(amount)
    for r, sb in zip(body.receipts, x.p.receipt_signing_bytes, strict=True):
        _verify_receipt(r, sb, x.verify)
    keys = tuple((r.executor, r.request_id) for r in body.receipts)
    return x.plan(x.head(free_after, x.acct.staked, x.unbonding), add_claimable=(x.p.hash, body.payee, amount), paid=keys)


PLANNERS: dict[type, Callable[[Ctx, Any], Plan]] = {
    StakeBody: _plan_stake,
    UnstakeBody: _plan_unstake,
    PayBody: _plan_pay,
    ClaimBody: _plan_claim,
    VerdictBody: _plan_verdict,
}
"""One planner per body class (OpenBody is planned before the account exists)."""
