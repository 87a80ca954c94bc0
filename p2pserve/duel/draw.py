"""The judge lottery: who judges a duel, computed from the requester's signed order alone.

The requester lists the judge candidates it sees, with their stakes, in its signed
:class:`~p2pserve.wire.duel.DuelOrder`; the judges are drawn from that list by stake, with
the randomness taken from the order's own hash. The order has no free field (no nonce, no
timestamp; both receipts come from the executors; candidates are sorted and unique), so
the requester cannot re-sign the same duel until the draw suits it without changing whom
it lists (the limit of this defence: ``docs/duel.md``), and anyone holding the order
recomputes the same judges: a verdict from anyone else is refused by the ledger rules and
by ``audit``.

The draw is stake-weighted sampling without replacement, done in integers so that every
machine computes the same judges (floating-point keys such as Efraimidis-Spirakis'
``u ** (1/w)`` may round differently across libms; the distribution is the same): round
``i`` reads ``r = H(order_hash || "judge" || i) mod total_stake`` and takes the candidate
whose cumulative stake (candidates sorted by peer ID) first exceeds ``r``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from p2pserve.crypto import sha256

__all__ = ["draw_judges"]

_LABEL = b"p2pserve/judge-draw/1"


def draw_judges(
    order_hash: bytes, candidates: Sequence[tuple[str, int]], k: int, exclude: Collection[str] = ()
) -> list[str]:
    """Up to ``k`` judges from ``candidates`` (``(peer_id, stake)``), in draw order.

    Candidates with no stake or in ``exclude`` (the requester and both executors) are never
    drawn; fewer than ``k`` eligible candidates means fewer judges."""
    pool = sorted((peer, stake) for peer, stake in candidates if stake > 0 and peer not in exclude)
    chosen: list[str] = []
    for i in range(min(k, len(pool))):
        total = sum(stake for _, stake in pool)
        r = int.from_bytes(sha256(_LABEL + order_hash + i.to_bytes(4, "big")), "big") % total
        acc = 0
        for j, (peer, stake) in enumerate(pool):
            acc += stake
            if r < acc:
                chosen.append(peer)
                del pool[j]
                break
    return chosen
