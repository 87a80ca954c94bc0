"""The ledger's pure rules: ``check``, ``apply``, ``fingerprint`` (Tendermint's check_tx /
deliver_tx / commit), over a :class:`LedgerState`.

Contract:

* ``check(block, state)`` raises :class:`~p2pserve.errors.InvalidBlock` with a stable
  ``reason`` code (see :data:`REASONS`) and changes nothing.
* ``apply(block, state)`` checks, then returns the new state. It never half-applies: it
  either raises (``state`` untouched and still usable) or returns the successor.
* ``fingerprint(state)`` is a SHA-256 over the canonical summary (accounts with their
  heads and balances, unclaimed credits, supply); two nodes holding the same blocks hold the
  same fingerprint, whatever order they received them in.

Performance choice (documented in docs/ledger.md): copying the whole state per block would
make replaying 100k blocks quadratic, so ``apply`` *moves* the storage into the returned
state and retires the old object; any later use of a retired state raises
:class:`~p2pserve.errors.LedgerError`. Callers that need to keep both call
``state.copy()`` (O(state)) first. ``check`` never mutates.

Invariants kept by every accepted block (``invariant_violations`` re-checks them):
only the account's key extends its chain; heights are consecutive from an ``open`` at 0;
``prev`` is the previous block's hash; timestamps never decrease along a chain; free,
staked and unbonding balances never go negative; a ``claim`` cites an unclaimed ``pay``
(or verdict award) to its own account, so each is claimed at most once; each receipt is
paid at most once (a ``pay`` settles 1..MAX_RECEIPTS_PER_PAY receipts of one executor and
leaves one claimable credit, their price sum); ``unstake``d credit is spendable only ``unbonding_delay_ms`` after the
unstake's timestamp (time is the block timestamps, never the wall clock, except the
optional ``now_ms`` bound against blocks from the future); total supply =
``initial_credit`` × opened accounts = all balances + unclaimed credit. Two blocks at one
account and height are an equivocation: the caller stores an
:class:`~p2pserve.ledger.blocks.EquivocationProof` and ``apply_proof`` freezes the account
(no further blocks from it; routing skips it; what it already paid stays claimable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from p2pserve.crypto import Signer, sha256, verify_by_peer_id
from p2pserve.errors import BadSignature, InvalidBlock, LedgerError, MalformedMessage
from p2pserve.ledger.blocks import (
    ZERO_HASH,
    Block,
    Body,
    ClaimBody,
    EquivocationProof,
    Kind,
    NetworkParams,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
    VerdictBody,
    decode_body,
    make_block,
    signing_bytes_of,
)
from p2pserve.wire.messages import Receipt

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW_MS",
    "DEPENDENCY_REASONS",
    "AccountView",
    "Claimable",
    "LedgerState",
    "Plan",
    "Prepared",
    "REASONS",
    "apply",
    "apply_proof",
    "check",
    "commit",
    "fingerprint",
    "invariant_violations",
    "next_block",
    "plan",
    "prepare",
]

DEFAULT_MAX_CLOCK_SKEW_MS = 60_000
"""How far in the future (vs the receiver's clock) a block's timestamp may be."""

REASONS: dict[str, str] = {
    "malformed": "the block or its body does not decode canonically",
    "wrong-network": "the block belongs to another network",
    "bad-signature": "the signature does not verify for the account's key",
    "duplicate": "this exact block is already in the ledger (a replay)",
    "equivocation": "another block is already at this account and height",
    "frozen": "the account is frozen after an equivocation",
    "height-gap": "the previous height of this account is not known (yet)",
    "bad-prev": "prev is not the hash of the account's previous block",
    "bad-timestamp": "earlier than the previous block, or too far in the future",
    "bad-open": "open only at height 0, and within the genesis limits",
    "bad-amount": "amounts must be positive",
    "insufficient-funds": "free credit would go negative",
    "unbonding": "the credit exists but is still unbonding",
    "insufficient-stake": "staked credit would go negative",
    "bad-receipt": "a cited receipt is unsigned, of another network, or not this payer's",
    "mixed-payees": "a pay's receipts are not all from one executor",
    "duplicate-pay": "a receipt was already paid (or appears twice in the pay)",
    "unknown-pay": "the claim cites no known payment to anyone",
    "double-claim": "the cited payment was already claimed",
    "wrong-payee": "the cited payment is to another account",
    "bad-claim": "the claim's citation does not match the payment",
    "unknown-account": "the verdict names an account that has not opened",
    "bad-verdict": "the verdict's parties, receipts or penalty are inconsistent",
    "duplicate-verdict": "a verdict for this duel order already exists",
    "bad-proof": "an equivocation proof that proves nothing",
}
"""Every reason code ``InvalidBlock`` carries, with its meaning."""

DEPENDENCY_REASONS = frozenset({"height-gap", "unknown-pay", "unknown-account"})
"""Reasons that may resolve once sync delivers missing blocks (keep such blocks pending)."""


def _fail(reason: str, detail: str = "") -> InvalidBlock:
    assert reason in REASONS, reason
    return InvalidBlock(reason, detail)


# --- state -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountView:
    """One account's chain head and balances (micro-credits)."""

    account: str
    height: int
    head: bytes
    timestamp_ms: int
    free: int
    staked: int
    unbonding: tuple[tuple[int, int], ...]
    """``(release_ms, amount)`` pairs; released lazily by the account's next block."""
    frozen: bool

    def free_at(self, now_ms: int) -> int:
        """Free credit at ``now_ms``, counting unbonding credit released by then."""
        return self.free + sum(a for r, a in self.unbonding if r <= now_ms)

    @property
    def unbonding_total(self) -> int:
        return sum(a for _, a in self.unbonding)


@dataclass(frozen=True, slots=True)
class Claimable:
    """Credit written to ``payee`` by a pay or verdict block, not yet claimed."""

    source_account: str
    source_height: int
    source_hash: bytes
    payee: str
    amount: int


@dataclass(frozen=True, slots=True)
class _Acct:
    height: int
    head: bytes
    timestamp_ms: int
    free: int
    staked: int
    unbonding: tuple[tuple[int, int], ...]


@dataclass(slots=True)
class _Core:
    accounts: dict[str, _Acct] = field(default_factory=dict)
    hashes: dict[str, list[bytes]] = field(default_factory=dict)
    claimables: dict[bytes, Claimable] = field(default_factory=dict)
    claimed: set[bytes] = field(default_factory=set)
    paid: set[tuple[str, bytes]] = field(default_factory=set)
    verdicts: set[bytes] = field(default_factory=set)
    frozen: dict[str, EquivocationProof] = field(default_factory=dict)
    minted: int = 0
    owed: int = 0
    paid_total: int = 0
    awarded_total: int = 0
    claimed_total: int = 0
    blocks: int = 0
    version: int = 0


class LedgerState:
    """The ledger after some blocks: read it, or advance it with :func:`apply`.

    Treat it as a value. ``apply`` hands its storage to the successor and retires this
    object (using it afterwards raises LedgerError); ``copy()`` makes an independent one.
    """

    __slots__ = ("_core", "_version", "params")

    def __init__(self, params: NetworkParams, _core: _Core | None = None) -> None:
        self.params = params
        self._core = _core if _core is not None else _Core()
        self._version = self._core.version

    @classmethod
    def genesis(cls, params: NetworkParams) -> LedgerState:
        """The empty ledger of the network ``params`` describes."""
        return cls(params)

    @property
    def core(self) -> _Core:
        if self._version != self._core.version:
            raise LedgerError("stale ledger state: apply() already advanced it (copy() it first to keep both)")
        return self._core

    def copy(self) -> LedgerState:
        """An independent state equal to this one (O(size of the state))."""
        c = self.core
        new = _Core(
            accounts=dict(c.accounts),
            hashes={k: list(v) for k, v in c.hashes.items()},
            claimables=dict(c.claimables),
            claimed=set(c.claimed),
            paid=set(c.paid),
            verdicts=set(c.verdicts),
            frozen=dict(c.frozen),
            minted=c.minted,
            owed=c.owed,
            paid_total=c.paid_total,
            awarded_total=c.awarded_total,
            claimed_total=c.claimed_total,
            blocks=c.blocks,
        )
        return LedgerState(self.params, new)

    # reads

    def account(self, account: str) -> AccountView | None:
        c = self.core
        a = c.accounts.get(account)
        if a is None:
            return None
        return AccountView(account, a.height, a.head, a.timestamp_ms, a.free, a.staked, a.unbonding, account in c.frozen)

    def accounts(self) -> list[str]:
        """Opened accounts, sorted."""
        return sorted(self.core.accounts)

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """``account -> (height, hash)`` of every chain's newest block."""
        return {k: (a.height, a.head) for k, a in self.core.accounts.items()}

    def hash_at(self, account: str, height: int) -> bytes | None:
        chain = self.core.hashes.get(account)
        if chain is None or not 0 <= height < len(chain):
            return None
        return chain[height]

    def claimable(self, source_hash: bytes) -> Claimable | None:
        return self.core.claimables.get(source_hash)

    def unclaimed_for(self, payee: str) -> list[Claimable]:
        """Credits written to ``payee`` that it has not claimed yet (O(unclaimed))."""
        return [c for c in self.core.claimables.values() if c.payee == payee]

    def is_paid(self, executor: str, request_id: bytes) -> bool:
        """Whether a ``pay`` already settled ``executor``'s receipt for ``request_id``."""
        return (executor, request_id) in self.core.paid

    def is_frozen(self, account: str) -> bool:
        return account in self.core.frozen

    def frozen(self) -> dict[str, EquivocationProof]:
        return dict(self.core.frozen)

    def stake_of(self, account: str) -> int:
        a = self.core.accounts.get(account)
        return 0 if a is None or account in self.core.frozen else a.staked

    @property
    def minted(self) -> int:
        """Total supply: ``initial_credit`` per opened account."""
        return self.core.minted

    @property
    def owed(self) -> int:
        """Credit paid or awarded but not yet claimed."""
        return self.core.owed

    @property
    def block_count(self) -> int:
        return self.core.blocks

    def totals(self) -> dict[str, int]:
        """Sums for reports: supply, free, staked, unbonding, owed, paid, awarded, claimed."""
        c = self.core
        return {
            "supply": c.minted,
            "free": sum(a.free for a in c.accounts.values()),
            "staked": sum(a.staked for a in c.accounts.values()),
            "unbonding": sum(x for a in c.accounts.values() for _, x in a.unbonding),
            "owed": c.owed,
            "paid": c.paid_total,
            "awarded": c.awarded_total,
            "claimed": c.claimed_total,
        }


# --- planning --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """A block with its signing bytes, hash and decoded body (computed once)."""

    block: Block
    signing_bytes: bytes
    hash: bytes
    body: Body
    receipt_signing_bytes: tuple[bytes, ...]
    """Signing bytes of the receipts the body embeds (pay: each, in order; verdict: winner's, loser's)."""


def prepare(block: Block, raw: bytes | None = None) -> Prepared:
    """Decode the body and hash the block; raises InvalidBlock("malformed").

    ``raw``, when given, must be the bytes ``block`` was decoded from by ``decode_block``
    (its signing bytes are then sliced from them instead of re-encoded).
    """
    try:
        body, receipts = decode_body(block.kind, block.body)
        sb = block.signing_bytes() if raw is None else signing_bytes_of(raw)
    except MalformedMessage as exc:
        raise _fail("malformed", str(exc)) from exc
    return Prepared(block, sb, sha256(sb), body, receipts)


@dataclass(slots=True)
class Plan:
    """The effects of one checked block, ready for :func:`commit` on the same state."""

    prepared: Prepared
    version: int
    acct: _Acct
    other: tuple[str, _Acct] | None = None
    add_claimable: Claimable | None = None
    claim: bytes | None = None
    paid: tuple[tuple[str, bytes], ...] = ()
    """``(executor, request_id)`` of every receipt a pay settles."""
    verdict: bytes | None = None
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
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
) -> Plan:
    """Check ``p`` against ``state`` and compute its effects without changing anything.

    ``verify=False`` skips signature checks (only for blocks whose signatures were already
    verified, e.g. replaying one's own store). Raises InvalidBlock.
    """
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
    if b.account in c.frozen:
        raise _fail("frozen", b.account)
    expected = 0 if acct is None else acct.height + 1
    if h != expected:
        raise _fail("height-gap", f"{b.account} is at height {expected - 1}, block is at {h}")
    if b.prev != (ZERO_HASH if acct is None else acct.head):
        raise _fail("bad-prev", f"{b.account} height {h}")
    ts = b.timestamp_ms
    if acct is not None and ts < acct.timestamp_ms:
        raise _fail("bad-timestamp", f"{ts} is before the previous block's {acct.timestamp_ms}")
    if now_ms is not None and ts > now_ms + max_clock_skew_ms:
        raise _fail("bad-timestamp", f"{ts} is more than {max_clock_skew_ms} ms in the future")
    body = p.body
    if (h == 0) != isinstance(body, OpenBody):
        raise _fail("bad-open", "a chain starts with exactly one open, at height 0")
    if isinstance(body, OpenBody):
        limit = min(params.initial_credit, params.max_initial_staked)
        if body.initial_staked > limit:
            raise _fail("bad-open", f"initial_staked {body.initial_staked} above {limit}")
        new = _Acct(0, p.hash, ts, params.initial_credit - body.initial_staked, body.initial_staked, ())
        return Plan(p, c.version, new, minted=params.initial_credit)
    assert acct is not None
    free, unbonding = acct.free, acct.unbonding
    if unbonding and unbonding[0][0] <= ts:
        free += sum(a for r, a in unbonding if r <= ts)
        unbonding = tuple(x for x in unbonding if x[0] > ts)

    def spend(amount: int) -> int:
        if amount <= 0:
            raise _fail("bad-amount", f"{amount}")
        if free < amount:
            if free + sum(a for _, a in unbonding) >= amount:
                raise _fail("unbonding", f"needs {amount}, {free} free, the rest unbonding")
            raise _fail("insufficient-funds", f"needs {amount}, has {free}")
        return free - amount

    if isinstance(body, StakeBody):
        new = _Acct(h, p.hash, ts, spend(body.amount), acct.staked + body.amount, unbonding)
        return Plan(p, c.version, new)
    if isinstance(body, UnstakeBody):
        if body.amount <= 0:
            raise _fail("bad-amount", f"{body.amount}")
        if acct.staked < body.amount:
            raise _fail("insufficient-stake", f"unstakes {body.amount}, has {acct.staked} staked")
        entry = (ts + params.unbonding_delay_ms, body.amount)
        new = _Acct(h, p.hash, ts, free, acct.staked - body.amount, (*unbonding, entry))
        return Plan(p, c.version, new)
    if isinstance(body, PayBody):
        amount = _pay_amount(body, c, b.network_id, b.account)
        return _plan_pay(p, body, c, acct, spend(amount), amount, unbonding, verify)
    if isinstance(body, ClaimBody):
        src = c.claimables.get(body.source_hash)
        if src is None:
            if body.source_hash in c.claimed:
                raise _fail("double-claim", body.source_hash.hex())
            raise _fail("unknown-pay", body.source_hash.hex())
        if src.payee != b.account:
            raise _fail("wrong-payee", f"the payment is to {src.payee}")
        if (src.source_account, src.source_height, src.amount) != (body.source_account, body.source_height, body.amount):
            raise _fail("bad-claim", "account, height or amount differ from the cited payment")
        new = _Acct(h, p.hash, ts, free + src.amount, acct.staked, unbonding)
        return Plan(p, c.version, new, claim=body.source_hash)
    assert isinstance(body, VerdictBody)
    return _plan_verdict(p, body, c, params, acct, free, unbonding, verify)


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


def _plan_pay(
    p: Prepared,
    body: PayBody,
    c: _Core,
    acct: _Acct,
    free_after: int,
    amount: int,
    unbonding: tuple[tuple[int, int], ...],
    verify: bool,
) -> Plan:
    """The effects of a pay whose amounts and funds are checked: verify every receipt."""
    b = p.block
    for r, sb in zip(body.receipts, p.receipt_signing_bytes):
        _verify_receipt(r, sb, verify)
    new = _Acct(b.height, p.hash, b.timestamp_ms, free_after, acct.staked, unbonding)
    owed = Claimable(b.account, b.height, p.hash, body.payee, amount)
    keys = tuple((r.executor, r.request_id) for r in body.receipts)
    return Plan(p, c.version, new, add_claimable=owed, paid=keys)


def _plan_verdict(
    p: Prepared,
    body: VerdictBody,
    c: _Core,
    params: NetworkParams,
    acct: _Acct,
    free: int,
    unbonding: tuple[tuple[int, int], ...],
    verify: bool,
) -> Plan:
    """Checks possible before the duel issue: parties, receipts, penalty, uniqueness.

    Lands with the duel issue: verifying ``order`` (the requester's signed duel order naming
    this judge, both executors and ``order_id``) and binding the receipts to it.
    """
    b = p.block
    judge = b.account
    wr, lr = body.winner_receipt, body.loser_receipt
    if body.winner == body.loser or judge in (body.winner, body.loser):
        raise _fail("bad-verdict", "winner, loser and judge must be three accounts")
    if wr.executor != body.winner or lr.executor != body.loser:
        raise _fail("bad-verdict", "each receipt must be signed by its party")
    if wr.request_id != lr.request_id or wr.requester != lr.requester or wr.network_id != b.network_id or lr.network_id != b.network_id:
        raise _fail("bad-verdict", "both receipts must answer one request of this network")
    if body.penalty != params.duel_penalty:
        raise _fail("bad-verdict", f"penalty must be {params.duel_penalty}")
    if body.order_id in c.verdicts:
        raise _fail("duplicate-verdict", body.order_id.hex())
    loser = c.accounts.get(body.loser)
    if loser is None:
        raise _fail("unknown-account", body.loser)
    for r, sb in zip((wr, lr), p.receipt_signing_bytes):
        try:
            _verify_receipt(r, sb, verify)
        except InvalidBlock as exc:
            raise _fail("bad-verdict", exc.detail) from exc
    # the penalty comes out of the loser's stake, then its unbonding credit (newest first)
    left = body.penalty
    staked = loser.staked
    take = min(left, staked)
    staked -= take
    left -= take
    unb = list(loser.unbonding)
    while left and unb:
        release, a = unb.pop()
        t = min(a, left)
        left -= t
        if a > t:
            unb.append((release, a - t))
    taken = body.penalty - left
    other = (body.loser, _Acct(loser.height, loser.head, loser.timestamp_ms, loser.free, staked, tuple(unb)))
    award = Claimable(judge, b.height, p.hash, body.winner, taken) if taken else None
    new = _Acct(b.height, p.hash, b.timestamp_ms, free, acct.staked, unbonding)
    return Plan(p, c.version, new, other=other, add_claimable=award, verdict=body.order_id)


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
    if pl.other is not None:
        c.accounts[pl.other[0]] = pl.other[1]
    if pl.add_claimable is not None:
        c.claimables[pl.add_claimable.source_hash] = pl.add_claimable
        c.owed += pl.add_claimable.amount
        if pl.paid:
            c.paid_total += pl.add_claimable.amount
        else:
            c.awarded_total += pl.add_claimable.amount
    c.paid.update(pl.paid)
    if pl.claim is not None:
        amount = c.claimables.pop(pl.claim).amount
        c.claimed.add(pl.claim)
        c.owed -= amount
        c.claimed_total += amount
    if pl.verdict is not None:
        c.verdicts.add(pl.verdict)
    c.minted += pl.minted
    c.blocks += 1
    c.version += 1
    return LedgerState(state.params, c)


# --- the public contract ---------------------------------------------------------------------


def check(block: Block, state: LedgerState, *, now_ms: int | None = None) -> None:
    """Raise InvalidBlock (with a stable ``reason``) unless ``block`` extends ``state``.

    Pure: verifies signatures, changes nothing. ``now_ms`` (the receiver's clock), when
    given, rejects blocks dated more than DEFAULT_MAX_CLOCK_SKEW_MS in the future.
    """
    plan(prepare(block), state, now_ms=now_ms)


def apply(block: Block, state: LedgerState, *, now_ms: int | None = None) -> LedgerState:
    """``check`` then return the successor state (``state`` is retired; see the module doc)."""
    return commit(plan(prepare(block), state, now_ms=now_ms), state)


def apply_proof(proof: EquivocationProof, state: LedgerState) -> LedgerState:
    """Freeze the equivocating account; raises InvalidBlock("bad-proof") for a non-proof.

    Idempotent: a second proof against a frozen account changes nothing.
    """
    try:
        proof.verify()
    except (MalformedMessage, BadSignature) as exc:
        raise _fail("bad-proof", str(exc)) from exc
    if proof.first.network_id != state.params.network_id:
        raise _fail("wrong-network", proof.first.network_id)
    c = state.core
    c.frozen.setdefault(proof.account, proof)
    c.version += 1
    return LedgerState(state.params, c)


def fingerprint(state: LedgerState) -> bytes:
    """SHA-256 over the canonical summary of ``state`` (independent of arrival order)."""
    c = state.core
    accounts = [
        [k, a.height, a.head, a.timestamp_ms, a.free, a.staked, [list(u) for u in a.unbonding], k in c.frozen]
        for k, a in sorted(c.accounts.items())
    ]
    summary = [state.params.network_id, c.minted, c.owed, accounts, sorted(c.claimables), sorted(c.frozen)]
    return sha256(msgpack.packb(summary, use_bin_type=True))


def invariant_violations(state: LedgerState) -> list[str]:
    """Every broken invariant of ``state`` as a sentence (empty when all hold)."""
    c = state.core
    out = []
    for k, a in c.accounts.items():
        if a.free < 0 or a.staked < 0 or any(x <= 0 for _, x in a.unbonding):
            out.append(f"{k}: negative balance (free {a.free}, staked {a.staked}, unbonding {a.unbonding})")
        if len(c.hashes.get(k, ())) != a.height + 1:
            out.append(f"{k}: chain length {len(c.hashes.get(k, ()))} does not match height {a.height}")
    t = state.totals()
    if t["free"] + t["staked"] + t["unbonding"] + t["owed"] != t["supply"]:
        out.append(f"supply mismatch: balances {t['free'] + t['staked'] + t['unbonding']} + owed {t['owed']} != {t['supply']}")
    if t["supply"] != state.params.initial_credit * len(c.accounts):
        out.append(f"supply {t['supply']} is not initial_credit x {len(c.accounts)} accounts")
    if c.owed != sum(x.amount for x in c.claimables.values()) or c.owed < 0:
        out.append("owed total does not match the unclaimed credits")
    if t["claimed"] > t["paid"] + t["awarded"]:
        out.append("more claimed than paid and awarded")
    return out


def next_block(signer: Signer, state: LedgerState, body: Body, timestamp_ms: int) -> Block:
    """A block extending ``signer``'s chain in ``state`` (height and prev from its head)."""
    a = state.core.accounts.get(signer.peer_id)
    height, prev = (0, ZERO_HASH) if a is None else (a.height + 1, a.head)
    return make_block(
        signer, network_id=state.params.network_id, height=height, prev=prev, body=body, timestamp_ms=timestamp_ms
    )


# Kind is re-checked here so a new kind cannot be added without rules for it.
assert set(Kind) == {Kind.OPEN, Kind.STAKE, Kind.UNSTAKE, Kind.PAY, Kind.CLAIM, Kind.VERDICT}
