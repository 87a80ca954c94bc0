"""The ledger's pure rules: ``check``, ``apply``, ``fingerprint`` (Tendermint's check_tx /
deliver_tx / commit), over a :class:`~p2pserve.ledger.state.LedgerState`.

Contract:

* ``check(block, state)`` raises :class:`~p2pserve.errors.InvalidBlock` with a stable
  ``reason`` code (see :data:`REASONS`) and changes nothing.
* ``apply(block, state)`` checks, then returns the new state. It never half-applies: it
  either raises (``state`` untouched and still usable) or returns the successor (``state``
  is retired: see :mod:`p2pserve.ledger.state`).
* ``fingerprint(state)`` is a SHA-256 over the canonical summary; two nodes holding the same
  blocks hold the same fingerprint, whatever order they received them in.

Invariants kept by every accepted block (``invariant_violations`` re-checks them):
only the account's key extends its chain; heights are consecutive from an ``open`` at 0;
``prev`` is the previous block's hash; timestamps never decrease along a chain; free,
staked and unbonding balances never go negative; a ``claim`` cites an unclaimed ``pay``
to its own account, so each is claimed at most once; each receipt is paid at most once (a
``pay`` settles 1..MAX_RECEIPTS_PER_PAY receipts of one executor and leaves one claimable
credit, their price sum); total supply = ``initial_credit`` × opened accounts = all
balances + unclaimed credit.

Time. Rules compare block timestamps only, except where the caller passes ``now_ms`` (its
clock, for blocks arriving from the network): a block dated more than the genesis's
``max_clock_skew_ms`` ahead of ``now_ms`` waits (reason ``future``), and a block that would
release unbonding credit waits until ``not_before(unstake hash)`` (the receiver's own
earliest release, from when it first saw the unstake) has passed (``unbonding-wait``). Both
are *time dependencies*: the block is kept and retried, never refused. Unstaked credit is
released to blocks dated at least ``unbonding_delay_ms + max_clock_skew_ms`` after the
unstake, so a block dated ahead by any accepted skew still cannot spend it early.

Equivocation. Two blocks at one account and height freeze the account. Which of its blocks
at or above the fork count is the :class:`~p2pserve.ledger.state.ForkView` the caller
installs (:mod:`p2pserve.ledger.forks` computes it from every known block, so it does not
depend on arrival order): blocks outside it are refused (``frozen``), and a claim of one of
its side-branch pays is a *void* claim (a valid block crediting nothing).

Verdicts. A ``verdict`` block carries the requester's signed duel order (both executors'
receipts, the judge candidates) and the outcome. It is valid when every signature in it
verifies, the order is well formed (:class:`~p2pserve.wire.duel.DuelOrder`), the block's
account is a judge the order draws (:func:`p2pserve.duel.draw.draw_judges`), the penalty is
``duel_penalty // order.judges`` (0 for a tie) and this judge has no verdict for the order
yet. Its effect is on *stake weight*, the number routing draws by, not on anyone's credit:
the winner's weight rises and the loser's falls by the penalty. Moving the loser's credit
would let a judge's block invalidate the loser's own later blocks (an unstake that no
longer fits), and which of them a node accepted would depend on arrival order; weight is
read by nobody's chain rules, so every set of blocks gives one state. Two different orders
citing one receipt (a requester re-signing a duel to redraw its judge) make both orders
void: their verdicts stay valid blocks but move nothing, on every node that has seen both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pserve.crypto import Signer, sha256, verify_by_peer_id
from p2pserve.duel.draw import draw_judges
from p2pserve.errors import BadSignature, InvalidBlock, LedgerError, MalformedMessage
from p2pserve.ledger.blocks import (
    BODY_TYPES,
    ZERO_HASH,
    Block,
    Body,
    ClaimBody,
    EquivocationProof,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
    VerdictBody,
    decode_body,
    make_block,
    signing_bytes_of,
)
from p2pserve.ledger.state import (
    Claimable,
    ForkView,
    LedgerState,
    Unbonding,
    VerdictRecord,
    _Acct,
    _Core,
    fingerprint,
    invariant_violations,
)
from p2pserve.wire.infer import Receipt

__all__ = [
    "DEPENDENCY_REASONS",
    "REASONS",
    "TIME_REASONS",
    "LedgerState",
    "Plan",
    "Prepared",
    "apply",
    "apply_proof",
    "check",
    "commit",
    "fingerprint",
    "invariant_violations",
    "next_block",
    "plan",
    "prepare",
    "verify_proof",
]

REASONS: dict[str, str] = {
    "malformed": "the block or its body does not decode canonically",
    "wrong-network": "the block belongs to another network",
    "bad-signature": "the signature does not verify for the account's key",
    "duplicate": "this exact block is already in the ledger (a replay)",
    "equivocation": "another block is already at this account and height",
    "frozen": "the account is frozen after an equivocation and this block is not on its relied-on branch",
    "height-gap": "the previous height of this account is not known (yet)",
    "bad-prev": "prev is not the hash of the account's previous block",
    "bad-timestamp": "earlier than the previous block",
    "future": "dated further ahead of the receiver's clock than the genesis allows (waits)",
    "bad-open": "open only at height 0, and within the genesis limits",
    "bad-amount": "amounts must be positive",
    "insufficient-funds": "free credit would go negative",
    "unbonding": "the credit exists but is still unbonding",
    "unbonding-wait": "the receiver first saw the unstake less than the unbonding delay ago (waits)",
    "insufficient-stake": "staked credit would go negative",
    "bad-receipt": "a cited receipt is unsigned, of another network, or not this payer's",
    "mixed-payees": "a pay's receipts are not all from one executor",
    "duplicate-pay": "a receipt was already paid (or appears twice in the pay)",
    "unknown-pay": "the claim cites no known payment to anyone",
    "double-claim": "the cited payment was already claimed",
    "wrong-payee": "the cited payment is to another account",
    "bad-claim": "the claim's citation does not match the payment",
    "bad-verdict": "the verdict's order is of another network, or its penalty is not the network's",
    "bad-order": "the duel order's requester signature does not verify",
    "judge-is-party": "the judge is the duel's requester or one of its executors",
    "not-drawn": "the judge is not one the duel order's draw picks",
    "duplicate-verdict": "this judge already wrote a verdict for this order",
    "bad-proof": "an equivocation proof that proves nothing",
}
"""Every reason code ``InvalidBlock`` carries, with its meaning."""

DEPENDENCY_REASONS = frozenset({"height-gap", "unknown-pay"})
"""Reasons that may resolve once sync delivers missing blocks (keep such blocks pending)."""

TIME_REASONS = frozenset({"future", "unbonding-wait"})
"""Reasons that resolve as the receiver's clock advances (keep such blocks and retry)."""


def _fail(reason: str, detail: str = "") -> InvalidBlock:
    assert reason in REASONS, reason
    return InvalidBlock(reason, detail)


# --- planning --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """A block with its signing bytes, hash and decoded body (computed once)."""

    block: Block
    signing_bytes: bytes
    hash: bytes
    body: Body
    receipt_signing_bytes: tuple[bytes, ...]
    """Signing bytes of the receipts the body embeds (pay: each, in order)."""


def prepare(block: Block, raw: bytes | None = None) -> Prepared:
    """Decode the body and hash the block; raises InvalidBlock("malformed").

    ``raw``, when given, must be the bytes ``block`` was decoded from by ``decode_block``
    (its signing bytes are then sliced from them instead of re-encoded).
    """
    known = _PREPARED.get(id(block))
    if known is not None and known[0] is block:
        return known[1]
    try:
        body, receipts = decode_body(block.kind, block.body)
        sb = block.signing_bytes() if raw is None else signing_bytes_of(raw)
    except MalformedMessage as exc:
        raise _fail("malformed", str(exc)) from exc
    p = Prepared(block, sb, sha256(sb), body, receipts)
    if len(_PREPARED) >= _PREPARED_MAX:
        _PREPARED.clear()
    _PREPARED[id(block)] = (block, p)
    return p


_PREPARED: dict[int, tuple[Block, Prepared]] = {}
"""Blocks prepared lately, by object (each entry keeps its block alive, so an ``id`` is never
reused while it is here): a gossiped block object is shared by every node of a process
(:func:`p2pserve.ledger.sync.decode_gossip`) and prepared once. Blocks are immutable."""
_PREPARED_MAX = 16_384


@dataclass(slots=True)
class Plan:
    """The effects of one checked block, ready for :func:`commit` on the same state."""

    prepared: Prepared
    version: int
    acct: _Acct
    add_claimable: tuple[bytes, str, int] | None = None
    """A pay's credit: ``(source hash, payee, amount)``."""
    claim: bytes | None = None
    void: bytes | None = None
    """A void claim: the side-branch pay it cites (nothing is credited)."""
    paid: tuple[tuple[str, bytes], ...] = ()
    """``(executor, request_id)`` of every receipt a pay settles."""
    verdict: VerdictRecord | None = None
    minted: int = 0


def _verify_receipt(r: Receipt, signing_bytes: bytes, verify: bool) -> None:
    if verify:
        try:
            verify_by_peer_id(r.executor, signing_bytes, r.signature)
        except (BadSignature, MalformedMessage) as exc:
            raise _fail("bad-receipt", f"receipt signature: {exc}") from exc


def plan(
    p: Prepared,
    state: LedgerState,
    *,
    now_ms: int | None = None,
    verify: bool = True,
    not_before: Callable[[bytes], int | None] | None = None,
) -> Plan:
    """Check ``p`` against ``state`` and compute its effects without changing anything.

    ``verify=False`` skips signature checks (only for blocks whose signatures were already
    verified, e.g. replaying one's own store). ``now_ms`` and ``not_before`` are the
    receiver's clock checks (module docstring). Raises InvalidBlock.

    The checks every block passes come first (:func:`_check_chain`: network, signature,
    duplicate / equivocation, frozen, height, prev, timestamp); then the kind's own rules
    (:data:`_PLANNERS`, one function per body class).
    """
    acct = _check_chain(p, state, now_ms, verify)
    body = p.body
    if (p.block.height == 0) != isinstance(body, OpenBody):
        raise _fail("bad-open", "a chain starts with exactly one open, at height 0")
    if isinstance(body, OpenBody):
        return _plan_open(p, body, state)
    assert acct is not None
    free, unbonding = _release(acct, p.block.timestamp_ms, now_ms, not_before)
    ctx = _Ctx(p, state, acct, free, unbonding, verify)
    return _PLANNERS[type(body)](ctx, body)


def _check_chain(p: Prepared, state: LedgerState, now_ms: int | None, verify: bool) -> _Acct | None:
    """The checks every block passes; the account's current head (None before its open)."""
    c = state.core
    params = state.params
    b = p.block
    if b.network_id != params.network_id:
        raise _fail("wrong-network", f"{b.network_id!r} is not {params.network_id!r}")
    if verify:
        try:
            verify_by_peer_id(b.account, p.signing_bytes, b.signature)
        except (BadSignature, MalformedMessage) as exc:
            raise _fail("bad-signature", str(exc)) from exc
    acct = c.accounts.get(b.account)
    h = b.height
    if acct is not None and h <= acct.height:
        if c.hashes[b.account][h] == p.hash:
            raise _fail("duplicate", f"{b.account} height {h}")
        raise _fail("equivocation", f"{b.account} already has another block at height {h}")
    fork = c.forks.get(b.account)
    if fork is not None and h >= fork.height and p.hash not in fork.canonical:
        raise _fail("frozen", b.account)
    expected = 0 if acct is None else acct.height + 1
    if h != expected:
        raise _fail("height-gap", f"{b.account} is at height {expected - 1}, block is at {h}")
    if b.prev != (ZERO_HASH if acct is None else acct.head):
        raise _fail("bad-prev", f"{b.account} height {h}")
    ts = b.timestamp_ms
    if acct is not None and ts < acct.timestamp_ms:
        raise _fail("bad-timestamp", f"{ts} is before the previous block's {acct.timestamp_ms}")
    if now_ms is not None and ts > now_ms + params.max_clock_skew_ms:
        raise _fail("future", f"{ts} is more than {params.max_clock_skew_ms} ms ahead of {now_ms}")
    return acct


@dataclass(frozen=True, slots=True)
class _Ctx:
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
            raise _fail("bad-amount", f"{amount}")
        if self.free < amount:
            if self.free + sum(u.amount for u in self.unbonding) >= amount:
                raise _fail("unbonding", f"needs {amount}, {self.free} free, the rest unbonding")
            raise _fail("insufficient-funds", f"needs {amount}, has {self.free}")
        return self.free - amount

    def head(self, free: int, staked: int, unbonding: tuple[Unbonding, ...]) -> _Acct:
        b = self.p.block
        return _Acct(b.height, self.p.hash, b.timestamp_ms, free, staked, unbonding)

    def plan(self, acct: _Acct, **effects: object) -> Plan:
        return Plan(self.p, self.state.core.version, acct, **effects)  # type: ignore[arg-type]


def _plan_open(p: Prepared, body: OpenBody, state: LedgerState) -> Plan:
    params = state.params
    limit = min(params.initial_credit, params.max_initial_staked)
    if body.initial_staked > limit:
        raise _fail("bad-open", f"initial_staked {body.initial_staked} above {limit}")
    new = _Acct(0, p.hash, p.block.timestamp_ms, params.initial_credit - body.initial_staked, body.initial_staked, ())
    return Plan(p, state.core.version, new, minted=params.initial_credit)


def _plan_stake(x: _Ctx, body: StakeBody) -> Plan:
    return x.plan(x.head(x.spend(body.amount), x.acct.staked + body.amount, x.unbonding))


def _plan_unstake(x: _Ctx, body: UnstakeBody) -> Plan:
    if body.amount <= 0:
        raise _fail("bad-amount", f"{body.amount}")
    if x.acct.staked < body.amount:
        raise _fail("insufficient-stake", f"unstakes {body.amount}, has {x.acct.staked} staked")
    params = x.state.params
    entry = Unbonding(x.p.block.timestamp_ms + params.unbonding_delay_ms + params.max_clock_skew_ms, body.amount, x.p.hash)
    return x.plan(x.head(x.free, x.acct.staked - body.amount, (*x.unbonding, entry)))


def _plan_verdict(x: _Ctx, body: VerdictBody) -> Plan:
    """A judge's verdict: structure and parties first, then the draw, then signatures."""
    b = x.p.block
    order = body.order
    judge = b.account
    if order.network_id != b.network_id:
        raise _fail("bad-verdict", "the order belongs to another network")
    if judge in order.parties:
        raise _fail("judge-is-party", f"{judge} is the requester or an executor of this duel")
    order_id = sha256(x.p.receipt_signing_bytes[2])  # order.digest(), from its own bytes
    if judge not in draw_judges(order_id, [(c.peer_id, c.stake) for c in order.candidates], order.judges, order.parties):
        raise _fail("not-drawn", f"{judge} is not a judge this order draws")
    penalty = 0 if body.outcome == "tie" else x.state.params.duel_penalty // order.judges
    if body.penalty != penalty:
        raise _fail("bad-verdict", f"penalty must be {penalty}")
    if x.state.has_verdict(order_id, judge):
        raise _fail("duplicate-verdict", f"{judge} already judged order {order_id.hex()[:16]}")
    if x.verify:
        sb = x.p.receipt_signing_bytes
        try:
            verify_by_peer_id(order.requester, sb[2], order.signature)
        except (BadSignature, MalformedMessage) as exc:
            raise _fail("bad-order", f"the requester's signature: {exc}") from exc
        for r, rsb in zip(order.receipts, sb[:2], strict=True):
            _verify_receipt(r, rsb, True)
    a, bx = order.executors
    keys = ((a, order.receipts[0].request_id), (bx, order.receipts[1].request_id))
    record = VerdictRecord(order_id, judge, a, bx, body.outcome, penalty, keys)
    return x.plan(x.head(x.free, x.acct.staked, x.unbonding), verdict=record)


def _release(
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
                raise _fail("unbonding-wait", f"the unstake {u.unstake.hex()[:16]} was first seen here too recently")
    return free + sum(u.amount for u in due), tuple(u for u in unbonding if u.release_ms > ts)


def _plan_claim(x: _Ctx, body: ClaimBody) -> Plan:
    b = x.p.block
    c = x.state.core
    src = c.claimables.get(body.source_hash)
    if src is None:
        if body.source_hash in c.claimed or body.source_hash in c.voided:
            raise _fail("double-claim", body.source_hash.hex())
        fork = c.forks.get(body.source_account)
        side = fork.side.get(body.source_hash) if fork is not None else None
        if side is None:
            raise _fail("unknown-pay", body.source_hash.hex())
        payee, amount = side
        if payee != b.account:
            raise _fail("wrong-payee", f"the payment is to {payee}")
        if amount != body.amount:
            raise _fail("bad-claim", "the amount differs from the cited payment")
        # a claim of a side-branch pay of an equivocator: valid, credits nothing
        return x.plan(x.head(x.free, x.acct.staked, x.unbonding), void=body.source_hash)
    if src.payee != b.account:
        raise _fail("wrong-payee", f"the payment is to {src.payee}")
    if (src.source_account, src.source_height, src.amount) != (body.source_account, body.source_height, body.amount):
        raise _fail("bad-claim", "account, height or amount differ from the cited payment")
    return x.plan(x.head(x.free + src.amount, x.acct.staked, x.unbonding), claim=body.source_hash)


def _pay_amount(body: PayBody, c: _Core, network_id: str, payer: str) -> int:
    """Check a pay's receipts without signatures (cheap checks first); their price sum."""
    payee = body.payee
    seen: set[bytes] = set()
    total = 0
    for r in body.receipts:
        if r.executor != payee:
            raise _fail("mixed-payees", f"receipts from {payee} and {r.executor}")
        if r.network_id != network_id or r.requester != payer or r.executor == payer:
            raise _fail("bad-receipt", "each receipt must be for this network, from another executor, to this payer")
        if r.price <= 0:
            raise _fail("bad-amount", f"receipt price {r.price} (a zero-price receipt needs no pay)")
        if r.request_id in seen or (r.executor, r.request_id) in c.paid:
            raise _fail("duplicate-pay", f"receipt for request {r.request_id.hex()} by {r.executor}")
        seen.add(r.request_id)
        total += r.price
    return total


def _plan_pay(x: _Ctx, body: PayBody) -> Plan:
    """A pay: cheap checks of its receipts first, then funds, then every receipt's signature."""
    b = x.p.block
    amount = _pay_amount(body, x.state.core, b.network_id, b.account)
    free_after = x.spend(amount)
    for r, sb in zip(body.receipts, x.p.receipt_signing_bytes, strict=True):
        _verify_receipt(r, sb, x.verify)
    keys = tuple((r.executor, r.request_id) for r in body.receipts)
    return x.plan(x.head(free_after, x.acct.staked, x.unbonding), add_claimable=(x.p.hash, body.payee, amount), paid=keys)


_PLANNERS: dict[type, Callable[[_Ctx, Any], Plan]] = {
    StakeBody: _plan_stake,
    UnstakeBody: _plan_unstake,
    PayBody: _plan_pay,
    ClaimBody: _plan_claim,
    VerdictBody: _plan_verdict,
}
"""One planner per body class (OpenBody is planned before the account exists)."""


def commit(pl: Plan, state: LedgerState) -> LedgerState:
    """Apply a plan made by :func:`plan` on this very state; retire ``state``."""
    c = state.core
    if pl.version != c.version:
        raise LedgerError("plan made on another version of the state")
    b = pl.prepared.block
    c.accounts[b.account] = pl.acct
    if b.height == 0:
        c.hashes[b.account] = [pl.prepared.hash]
    else:
        c.hashes[b.account].append(pl.prepared.hash)
    if pl.add_claimable is not None:
        h, payee, amount = pl.add_claimable
        c.claimables[h] = Claimable(b.account, b.height, h, payee, amount)
        c.owed += amount
        c.paid_total += amount
    c.paid.update(pl.paid)
    if pl.claim is not None:
        amount = c.claimables.pop(pl.claim).amount
        c.claimed.add(pl.claim)
        c.owed -= amount
        c.claimed_total += amount
    if pl.void is not None:
        c.voided.add(pl.void)
    if pl.verdict is not None:
        _count_verdict(c, pl.verdict)
    c.minted += pl.minted
    c.blocks += 1
    c.version += 1
    return LedgerState(state.params, c)


def _count_verdict(c: _Core, v: VerdictRecord) -> None:
    """Record ``v``; void its order (and any other) when two orders cite one receipt."""
    c.verdicts.setdefault(v.order_id, {})[v.judge] = v
    clash = set()
    for key in v.receipts:
        orders = c.orders_of.setdefault(key, set())
        orders.add(v.order_id)
        if len(orders) > 1:
            clash |= orders
    for oid in sorted(clash - c.void_orders):  # newly void: undo what their verdicts moved
        c.void_orders.add(oid)
        for other in c.verdicts[oid].values():
            if other is not v:  # v has not moved anything yet
                _move(c, other.deltas(), -1)
    if v.order_id not in c.void_orders:
        _move(c, v.deltas(), +1)


def _move(c: _Core, deltas: tuple[tuple[str, int], ...], sign: int) -> None:
    for account, amount in deltas:
        c.stake_delta[account] = c.stake_delta.get(account, 0) + sign * amount


# --- the public contract ---------------------------------------------------------------------


def check(block: Block, state: LedgerState, *, now_ms: int | None = None) -> None:
    """Raise InvalidBlock (with a stable ``reason``) unless ``block`` extends ``state``.

    Pure: verifies signatures, changes nothing. ``now_ms`` (the receiver's clock), when
    given, makes blocks dated too far ahead wait (``future``).
    """
    plan(prepare(block), state, now_ms=now_ms)


def apply(block: Block, state: LedgerState, *, now_ms: int | None = None) -> LedgerState:
    """``check`` then return the successor state (``state`` is retired; see the module doc)."""
    return commit(plan(prepare(block), state, now_ms=now_ms), state)


def verify_proof(proof: EquivocationProof, state: LedgerState) -> None:
    """Raise InvalidBlock("bad-proof" / "wrong-network") unless ``proof`` proves an
    equivocation on this network."""
    try:
        proof.verify()
    except (MalformedMessage, BadSignature) as exc:
        raise _fail("bad-proof", str(exc)) from exc
    if proof.first.network_id != state.params.network_id:
        raise _fail("wrong-network", proof.first.network_id)


def apply_proof(proof: EquivocationProof, state: LedgerState, fork: ForkView | None = None) -> LedgerState:
    """Freeze the equivocating account; raises InvalidBlock("bad-proof") for a non-proof.

    ``fork`` is the account's fork choice (:func:`p2pserve.ledger.forks.choose`); without it
    the blocks already applied at or above the fork stay canonical and nothing else is
    accepted there. A proof at a lower height than the account's current one replaces it.
    Blocks already applied are not revisited: :func:`p2pserve.ledger.forks.replay` builds
    the state with every fork choice from the start.
    """
    verify_proof(proof, state)
    c = state.core
    old = c.forks.get(proof.account)
    if old is not None and old.height <= proof.height and fork is None:
        c.version += 1
        return LedgerState(state.params, c)
    if fork is None:
        chain = c.hashes.get(proof.account, [])
        fork = ForkView(proof.height, frozenset(chain[proof.height :]))
    if old is None or proof.height <= old.height:
        c.frozen[proof.account] = proof
    c.forks[proof.account] = fork
    c.version += 1
    return LedgerState(state.params, c)


def next_block(signer: Signer, state: LedgerState, body: Body, timestamp_ms: int) -> Block:
    """A block extending ``signer``'s chain in ``state`` (height and prev from its head)."""
    a = state.core.accounts.get(signer.peer_id)
    height, prev = (0, ZERO_HASH) if a is None else (a.height + 1, a.head)
    return make_block(
        signer, network_id=state.params.network_id, height=height, prev=prev, body=body, timestamp_ms=timestamp_ms
    )


# A new kind cannot be added without rules for it.
assert set(BODY_TYPES.values()) == {OpenBody, *_PLANNERS}
