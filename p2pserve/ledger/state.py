"""The ledger's state after some blocks: accounts, unclaimed credit, frozen accounts and their
fork choices, with the order-independent :func:`fingerprint` and :func:`invariant_violations`.

Pure: no I/O, no clock. :mod:`p2pserve.ledger.rules` checks blocks against a
:class:`LedgerState` and advances it; this module only holds and reads it.

Performance choice (documented in docs/ledger.md): copying the whole state per block would
make replaying 100k blocks quadratic, so ``rules.commit`` *moves* the storage into the
returned state and retires the old object; any later use of a retired state raises
:class:`~p2pserve.errors.LedgerError`. Callers that need to keep both call ``state.copy()``
(O(state)) first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgpack

from p2pserve.crypto import sha256
from p2pserve.errors import LedgerError
from p2pserve.ledger.blocks import EquivocationProof, NetworkParams

__all__ = [
    "AccountView",
    "Claimable",
    "ForkView",
    "LedgerState",
    "Unbonding",
    "VerdictRecord",
    "fingerprint",
    "invariant_violations",
]


@dataclass(frozen=True, slots=True)
class Unbonding:
    """Credit on its way from stake to free: ``amount`` micro-credits, free for blocks dated at
    or after ``release_ms``, unstaked by the block ``unstake``."""

    release_ms: int
    amount: int
    unstake: bytes


@dataclass(frozen=True, slots=True)
class AccountView:
    """One account's chain head and balances (micro-credits)."""

    account: str
    height: int
    head: bytes
    timestamp_ms: int
    free: int
    staked: int
    unbonding: tuple[Unbonding, ...]
    """Released lazily by the account's next block dated at or after their ``release_ms``."""
    frozen: bool

    def free_at(self, now_ms: int) -> int:
        """Free credit at ``now_ms``, counting unbonding credit released by then."""
        return self.free + sum(u.amount for u in self.unbonding if u.release_ms <= now_ms)

    @property
    def unbonding_total(self) -> int:
        return sum(u.amount for u in self.unbonding)


@dataclass(frozen=True, slots=True)
class Claimable:
    """Credit written to ``payee`` by a pay block, not yet claimed."""

    source_account: str
    source_height: int
    source_hash: bytes
    payee: str
    amount: int


@dataclass(frozen=True, slots=True)
class ForkView:
    """What the ledger accepts of a frozen (equivocating) account from ``height`` up, where
    its first proven fork is: only the ``canonical`` blocks (the branch other accounts relied
    on by claiming its pays, see :mod:`p2pserve.ledger.forks`). ``side`` maps every other
    known pay block of the account at or above ``height`` to ``(payee, amount)``: a claim
    citing one is *void* (a valid block that credits nothing)."""

    height: int
    canonical: frozenset[bytes] = frozenset()
    side: Mapping[bytes, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    """One counted verdict: executors ``a`` and ``b`` of the order (in its order), the
    ``outcome`` (``"A"``, ``"B"``, ``"tie"``) and the stake weight it moves."""

    order_id: bytes
    judge: str
    a: str
    b: str
    outcome: str
    penalty: int
    receipts: tuple[tuple[str, bytes], tuple[str, bytes]]
    """``(executor, request_id)`` of the order's two receipts."""

    def deltas(self) -> tuple[tuple[str, int], ...]:
        """``(account, stake-weight change)`` this verdict makes while its order counts."""
        if self.outcome == "tie" or not self.penalty:
            return ()
        winner, loser = (self.a, self.b) if self.outcome == "A" else (self.b, self.a)
        return (winner, self.penalty), (loser, -self.penalty)


@dataclass(frozen=True, slots=True)
class _Acct:
    height: int
    head: bytes
    timestamp_ms: int
    free: int
    staked: int
    unbonding: tuple[Unbonding, ...]


@dataclass(slots=True)
class _Core:
    accounts: dict[str, _Acct] = field(default_factory=dict)
    hashes: dict[str, list[bytes]] = field(default_factory=dict)
    claimables: dict[bytes, Claimable] = field(default_factory=dict)
    claimed: set[bytes] = field(default_factory=set)
    voided: set[bytes] = field(default_factory=set)
    """Source hashes of side-branch pays that were claimed (void claims: nothing credited)."""
    paid: set[tuple[str, bytes]] = field(default_factory=set)
    frozen: dict[str, EquivocationProof] = field(default_factory=dict)
    forks: dict[str, ForkView] = field(default_factory=dict)
    verdicts: dict[bytes, dict[str, VerdictRecord]] = field(default_factory=dict)
    """``order_id -> judge -> verdict`` of every verdict block applied."""
    orders_of: dict[tuple[str, bytes], set[bytes]] = field(default_factory=dict)
    """``(executor, request_id)`` of a receipt -> the orders citing it."""
    void_orders: set[bytes] = field(default_factory=set)
    """Orders sharing a receipt with another order: their verdicts move nothing."""
    stake_delta: dict[str, int] = field(default_factory=dict)
    """Stake weight won minus lost in counted verdicts, per account."""
    minted: int = 0
    owed: int = 0
    paid_total: int = 0
    claimed_total: int = 0
    blocks: int = 0
    version: int = 0


class LedgerState:
    """The ledger after some blocks: read it, or advance it with ``rules.apply``.

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
            voided=set(c.voided),
            paid=set(c.paid),
            frozen=dict(c.frozen),
            forks=dict(c.forks),
            verdicts={k: dict(v) for k, v in c.verdicts.items()},
            orders_of={k: set(v) for k, v in c.orders_of.items()},
            void_orders=set(c.void_orders),
            stake_delta=dict(c.stake_delta),
            minted=c.minted,
            owed=c.owed,
            paid_total=c.paid_total,
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

    def head_of(self, account: str) -> bytes | None:
        """The hash of ``account``'s newest block (None before its open)."""
        a = self.core.accounts.get(account)
        return None if a is None else a.head

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

    def is_claimed(self, source_hash: bytes) -> bool:
        """Whether a claim (real or void) already cites ``source_hash``."""
        c = self.core
        return source_hash in c.claimed or source_hash in c.voided

    def is_paid(self, executor: str, request_id: bytes) -> bool:
        """Whether a ``pay`` already settled ``executor``'s receipt for ``request_id``."""
        return (executor, request_id) in self.core.paid

    def is_frozen(self, account: str) -> bool:
        return account in self.core.frozen

    def frozen(self) -> dict[str, EquivocationProof]:
        return dict(self.core.frozen)

    def fork(self, account: str) -> ForkView | None:
        """The fork choice of a frozen account (None for accounts never proven to equivocate)."""
        return self.core.forks.get(account)

    def side_pays_to(self, payee: str) -> list[tuple[str, bytes, int]]:
        """Known side-branch pays of frozen accounts to ``payee``: ``(account, hash, amount)``
        (claiming one is a void claim unless it changes the fork choice)."""
        out = []
        for acct, fv in sorted(self.core.forks.items()):
            for h, (to, amount) in sorted(fv.side.items()):
                if to == payee:
                    out.append((acct, h, amount))
        return out

    def stake_of(self, account: str) -> int:
        """The stake weight routing uses: staked credit plus what duels moved to it (minus
        what they moved away), never below 0; 0 for a frozen or unknown account."""
        c = self.core
        a = c.accounts.get(account)
        if a is None or account in c.frozen:
            return 0
        return max(0, a.staked + c.stake_delta.get(account, 0))

    def stake_delta(self, account: str) -> int:
        """Stake weight won minus lost in duels (counted verdicts)."""
        return self.core.stake_delta.get(account, 0)

    def verdicts(self) -> list[VerdictRecord]:
        """Every counted verdict (orders not void), sorted by order ID then judge."""
        c = self.core
        return [
            v for oid, by_judge in sorted(c.verdicts.items()) if oid not in c.void_orders
            for _, v in sorted(by_judge.items())
        ]

    def verdict_count(self) -> int:
        """Verdict blocks applied (void orders included)."""
        return sum(len(v) for v in self.core.verdicts.values())

    def has_verdict(self, order_id: bytes, judge: str) -> bool:
        v = self.core.verdicts.get(order_id)
        return v is not None and judge in v

    def void_orders(self) -> list[bytes]:
        return sorted(self.core.void_orders)

    @property
    def minted(self) -> int:
        """Total supply: ``initial_credit`` per opened account."""
        return self.core.minted

    @property
    def owed(self) -> int:
        """Credit paid but not yet claimed."""
        return self.core.owed

    @property
    def block_count(self) -> int:
        return self.core.blocks

    def totals(self) -> dict[str, int]:
        """Sums for reports: supply, free, staked, unbonding, owed, paid, claimed."""
        c = self.core
        return {
            "supply": c.minted,
            "free": sum(a.free for a in c.accounts.values()),
            "staked": sum(a.staked for a in c.accounts.values()),
            "unbonding": sum(u.amount for a in c.accounts.values() for u in a.unbonding),
            "owed": c.owed,
            "paid": c.paid_total,
            "claimed": c.claimed_total,
        }


def fingerprint(state: LedgerState) -> bytes:
    """SHA-256 over the canonical summary of ``state`` (independent of arrival order)."""
    c = state.core
    accounts = [
        [
            k, a.height, a.head, a.timestamp_ms, a.free, a.staked,
            [[u.release_ms, u.amount, u.unstake] for u in a.unbonding], k in c.frozen,
        ]
        for k, a in sorted(c.accounts.items())
    ]
    forks = [[k, f.height, sorted(f.canonical)] for k, f in sorted(c.forks.items())]
    verdicts = [[oid, sorted(by_judge)] for oid, by_judge in sorted(c.verdicts.items())]
    summary = [
        state.params.network_id, c.minted, c.owed, accounts, sorted(c.claimables), sorted(c.frozen), forks,
        sorted(c.voided), verdicts, sorted(c.void_orders), sorted((k, v) for k, v in c.stake_delta.items() if v),
    ]
    return sha256(msgpack.packb(summary, use_bin_type=True))


def invariant_violations(state: LedgerState) -> list[str]:
    """Every broken invariant of ``state`` as a sentence (empty when all hold)."""
    c = state.core
    out = []
    for k, a in c.accounts.items():
        if a.free < 0 or a.staked < 0 or any(u.amount <= 0 for u in a.unbonding):
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
    if t["claimed"] > t["paid"]:
        out.append("more claimed than paid")
    if sum(c.stake_delta.values()) != 0:
        out.append("duel stake weight does not balance (won != lost)")
    return out
