"""Fork choice for equivocating accounts, and the replay that builds a ledger state from a
*set* of blocks so that every node holding the same blocks holds the same state.

Pure: no I/O, no clock.

An account with a proven equivocation is frozen from its lowest proven fork height ``h``.
Its blocks below ``h`` count as usual. At and above ``h`` its blocks form a tree (two or
more blocks per height); the ledger keeps the branch that other accounts *relied on*:

* a block is *cited* when a claim of another account names it and the claim matches it
  (the block is a pay to the claimer, of the claimed amount, at the claimed height);
* a block's weight is the credit cited in its subtree;
* from the blocks at ``h``, the canonical path repeatedly takes the heaviest child (ties:
  the lowest block hash) while that child's subtree carries any weight, so it ends at the
  highest block someone relied on. Nothing the cheater wrote beyond that counts, and an
  equivocator nobody relied on is cut at ``h - 1``.

Claims of pays off the canonical path (a double spend both payees claimed) stay valid
blocks but credit nothing (*void*): the payee's chain is never stranded, and the
cheater cannot print credit by paying many sybils on many branches. Because the choice is a
function of the known blocks only, nodes that received them in different orders (one saw
the freeze before either branch, another after claiming one) compute the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from p2pserve.errors import InvalidBlock
from p2pserve.ledger.blocks import ClaimBody, EquivocationProof, NetworkParams, PayBody
from p2pserve.ledger.rules import DEPENDENCY_REASONS, Prepared, apply_proof, commit, plan
from p2pserve.ledger.state import ForkView, LedgerState

__all__ = ["ReplayResult", "choose", "lowest_proofs", "replay"]


def choose(
    account: str, fork_height: int, blocks: Iterable[Prepared], claims: Iterable[Prepared]
) -> ForkView:
    """The fork view of ``account`` (frozen from ``fork_height``) given all of its known
    blocks at or above that height and every known claim block (any account) that may cite
    them. Deterministic: the result does not depend on the order of the inputs."""
    nodes = {p.hash: p for p in blocks if p.block.account == account and p.block.height >= fork_height}
    cited: dict[bytes, int] = {}
    for c in claims:
        body = c.body
        if not isinstance(body, ClaimBody) or body.source_account != account or c.block.account == account:
            continue
        target = nodes.get(body.source_hash)
        if target is None or target.block.height != body.source_height:
            continue
        pay = target.body
        if isinstance(pay, PayBody) and pay.payee == c.block.account and pay.amount == body.amount:
            cited[target.hash] = body.amount
    children: dict[bytes, list[bytes]] = {}
    for h, p in nodes.items():
        if p.block.height > fork_height and p.block.prev in nodes:
            children.setdefault(p.block.prev, []).append(h)
    weight: dict[bytes, int] = {}
    for h in sorted(nodes, key=lambda x: -nodes[x].block.height):
        weight[h] = cited.get(h, 0) + sum(weight[k] for k in children.get(h, ()))
    canonical: list[bytes] = []
    level = [h for h, p in nodes.items() if p.block.height == fork_height]
    while True:
        live = [h for h in level if weight[h] > 0]
        if not live:
            break
        best = min(live, key=lambda h: (-weight[h], h))
        canonical.append(best)
        level = children.get(best, [])
    chosen = frozenset(canonical)
    side = {
        h: (p.body.payee, p.body.amount)
        for h, p in nodes.items()
        if h not in chosen and isinstance(p.body, PayBody)
    }
    return ForkView(fork_height, chosen, side)


def lowest_proofs(proofs: Iterable[EquivocationProof]) -> dict[str, EquivocationProof]:
    """Per account, its proof at the lowest height (ties: the lowest proof key)."""
    out: dict[str, EquivocationProof] = {}
    for proof in proofs:
        old = out.get(proof.account)
        if old is None or (proof.height, proof.key()) < (old.height, old.key()):
            out[proof.account] = proof
    return out


@dataclass(slots=True)
class ReplayResult:
    """What :func:`replay` made of a set of blocks."""

    state: LedgerState
    applied: list[Prepared] = field(default_factory=list)
    """Blocks in the state, in an order the rules accept (each after what it depends on)."""
    side: list[Prepared] = field(default_factory=list)
    """Blocks of frozen accounts off their canonical path (kept: the choice may change)."""
    rejected: list[tuple[Prepared, InvalidBlock]] = field(default_factory=list)
    """Blocks the rules refuse for good, with the reason."""
    waiting: list[tuple[Prepared, InvalidBlock]] = field(default_factory=list)
    """Blocks still missing a predecessor or a cited payment."""


def replay(
    params: NetworkParams,
    blocks: Sequence[Prepared],
    proofs: Iterable[EquivocationProof],
    *,
    verify: bool = False,
) -> ReplayResult:
    """The state holding every block of ``blocks`` that the rules accept, with every
    proven equivocator frozen under its fork choice. ``blocks`` may come in any order
    (each waits for what it depends on); proofs must already be verified or ``verify``.
    Every claim in ``blocks`` counts for the fork choices (the store and the audit replay
    the same set, so they agree).

    Raises InvalidBlock("bad-proof") for a proof that proves nothing."""
    state = LedgerState.genesis(params)
    unique = list({p.hash: p for p in blocks}.values())
    claims = [p for p in unique if isinstance(p.body, ClaimBody)]
    for proof in lowest_proofs(proofs).values():
        view = choose(proof.account, proof.height, unique, claims)
        state = apply_proof(proof, state, view)
    res = ReplayResult(state)
    parked: dict[tuple[object, ...], list[Prepared]] = {}
    for first in unique:
        queue = [first]
        while queue:
            p = queue.pop()
            try:
                pl = plan(p, res.state, verify=verify)
            except InvalidBlock as exc:
                if exc.reason in DEPENDENCY_REASONS:
                    parked.setdefault(dependency_key(p, exc.reason), []).append(p)
                elif exc.reason == "frozen" or (exc.reason == "equivocation" and res.state.is_frozen(p.block.account)):
                    res.side.append(p)
                elif exc.reason != "duplicate":
                    res.rejected.append((p, exc))
                continue
            res.state = commit(pl, res.state)
            res.applied.append(p)
            queue.extend(reversed(parked.pop(("h", p.block.account, p.block.height), [])))
            queue.extend(reversed(parked.pop(("p", p.hash), [])))
    for waiting in parked.values():
        for p in waiting:
            try:
                plan(p, res.state, verify=False)
            except InvalidBlock as exc:
                res.waiting.append((p, exc))
    return res


def dependency_key(p: Prepared, reason: str) -> tuple[object, ...]:
    """What a block waiting for ``reason`` waits on: ``("h", account, height)`` for its
    predecessor, ``("p", hash)`` for a cited payment."""
    if reason == "height-gap":
        return ("h", p.block.account, p.block.height - 1)
    body = p.body
    assert reason == "unknown-pay" and isinstance(body, ClaimBody), reason
    return ("p", body.source_hash)
