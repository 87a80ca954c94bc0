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

from p2pserve.crypto import Signer, verify_by_peer_id
from p2pserve.errors import BadSignature, LedgerError, MalformedMessage
from p2pserve.ledger.blocks import BODY_TYPES, ZERO_HASH, Block, Body, EquivocationProof, OpenBody, make_block
from p2pserve.ledger.planners import PLANNERS, Ctx, plan_open, release
from p2pserve.ledger.prepared import DEPENDENCY_REASONS, REASONS, TIME_REASONS, Plan, Prepared, fail, prepare
from p2pserve.ledger.state import Claimable, ForkView, LedgerState, VerdictRecord, _Acct, _Core, fingerprint, invariant_violations

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
    (:data:`PLANNERS`, one function per body class).
    """
    acct = _check_chain(p, state, now_ms, verify)
    body = p.body
    if (p.block.height == 0) != isinstance(body, OpenBody):
        raise fail("bad-open", "a chain starts with exactly one open, at height 0")
    if isinstance(body, OpenBody):
        return plan_open(p, body, state)
    assert acct is not None
    free, unbonding = release(acct, p.block.timestamp_ms, now_ms, not_before)
    ctx = Ctx(p, state, acct, free, unbonding, verify)
    return PLANNERS[type(body)](ctx, body)


def _check_chain(p: Prepared, state: LedgerState, now_ms: int | None, verify: bool) -> _Acct | None:
    """The checks every block passes; the account's current head (None before its open)."""
    c = state.core
    params = state.params
    b = p.block
    if b.network_id != params.network_id:
        raise fail("wrong-network", f"{b.network_id!r} is not {params.network_id!r}")
    if verify:
        try:
            verify_by_peer_id(b.account, p.signing_bytes, b.signature)
        except (BadSignature, MalformedMessage) as exc:
            raise fail("bad-signature", str(exc)) from exc
    acct = c.accounts.get(b.account)
    h = b.height
    if acct is not None and h <= acct.height:
        if c.hashes[b.account][h] == p.hash:
            raise fail("duplicate", f"{b.account} height {h}")
        raise fail("equivocation", f"{b.account} already has another block at height {h}")
    fork = c.forks.get(b.account)
    if fork is not None and h >= fork.height and p.hash not in fork.canonical:
        raise fail("frozen", b.account)
    expected = 0 if acct is None else acct.height + 1
    if h != expected:
        raise fail("height-gap", f"{b.account} is at height {expected - 1}, block is at {h}")
    if b.prev != (ZERO_HASH if acct is None else acct.head):
        raise fail("bad-prev", f"{b.account} height {h}")
    ts = b.timestamp_ms
    if acct is not None and ts < acct.timestamp_ms:
        raise fail("bad-timestamp", f"{ts} is before the previous block's {acct.timestamp_ms}")
    if now_ms is not None and ts > now_ms + params.max_clock_skew_ms:
        raise fail("future", f"{ts} is more than {params.max_clock_skew_ms} ms ahead of {now_ms}")
    return acct


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
        raise fail("bad-proof", str(exc)) from exc
    if proof.first.network_id != state.params.network_id:
        raise fail("wrong-network", proof.first.network_id)


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
assert set(BODY_TYPES.values()) == {OpenBody, *PLANNERS}
