"""Test and simulator helpers for duels: well-formed signed duel orders and verdict bodies
over a :class:`~p2pserve.testing.ledger.World` (its named signers and network)."""

from __future__ import annotations

from collections.abc import Sequence

from p2pserve.crypto import sha256
from p2pserve.duel.draw import draw_judges
from p2pserve.ledger.blocks import VerdictBody
from p2pserve.testing.ledger import World
from p2pserve.wire.duel import DuelOrder, JudgeCandidate
from p2pserve.wire.infer import Receipt, RequestHeader

__all__ = ["drawn_judge", "duel_order", "verdict_body"]


def duel_order(
    w: World,
    requester: str,
    a: str,
    b: str,
    candidates: Sequence[tuple[str, int]],
    *,
    judges: int = 1,
    prompt: bytes = b'{"messages": [{"role": "user", "content": "hi"}]}',
    price: int = 1,
) -> DuelOrder:
    """``requester``'s signed order for a duel between ``a`` and ``b`` (two fresh complete
    receipts for one prompt), listing ``candidates`` as ``(name, stake)``."""
    receipts = []
    headers = []
    for name in (a, b):
        header = RequestHeader(
            w.rng.randbytes(16), w.params.network_id, w.id(requester), w.id(name), "test-model", "chat",
            sha256(prompt), 0, sha256(b""), 1_000_000,
        )
        answer = f"answer of {name}".encode()
        receipt = Receipt(
            header.request_id, w.params.network_id, w.id(requester), w.id(name), "test-model", header.hash(),
            sha256(answer), 10, 20, price, False, 0, b"",
        ).signed(w.signer(name))
        headers.append(header)
        receipts.append(receipt)
    listed = tuple(sorted((JudgeCandidate(w.id(n), s) for n, s in candidates), key=lambda c: c.peer_id))
    order = DuelOrder(w.params.network_id, w.id(requester), tuple(headers), tuple(receipts), listed, judges, b"")
    return order.signed(w.signer(requester))


def drawn_judge(w: World, order: DuelOrder, names: Sequence[str]) -> str:
    """The name (among ``names``) of the first judge ``order`` draws."""
    first = draw_judges(order.order_id(), [(c.peer_id, c.stake) for c in order.candidates], order.judges, order.parties)[0]
    return next(n for n in names if w.id(n) == first)


def verdict_body(w: World, order: DuelOrder, outcome: str, *, method: str = "fake") -> VerdictBody:
    """The verdict body a drawn judge writes for ``order`` (penalty per the network's rules)."""
    penalty = 0 if outcome == "tie" else w.params.duel_penalty // order.judges
    return VerdictBody(order, outcome, method, (), (), penalty)
