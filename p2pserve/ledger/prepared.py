"""The ledger rules' vocabulary: every reason a block is refused for, and a block prepared
for checking (decoded body, signing bytes, hash: computed once) with the plan of its
effects. Pure; :mod:`p2pserve.ledger.rules` is the contract built on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pserve.crypto import sha256
from p2pserve.errors import InvalidBlock, MalformedMessage
from p2pserve.ledger.blocks import Block, Body, decode_body, signing_bytes_of
from p2pserve.ledger.state import VerdictRecord, _Acct

__all__ = ["DEPENDENCY_REASONS", "REASONS", "TIME_REASONS", "Plan", "Prepared", "fail", "prepare"]

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


def fail(reason: str, detail: str = "") -> InvalidBlock:
    assert reason in REASONS, reason
    return InvalidBlock(reason, detail)


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
        raise fail("malformed", str(exc)) from exc
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
