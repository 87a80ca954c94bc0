"""Which peers a request is offered to, in which order: the :class:`Router` seam of the
serving service, and the network's own :class:`PosRouter`.

A router is pure (no I/O; time and randomness are arguments). The simulator's centralized
baselines and the duel's second executor plug in here; the product uses :class:`PosRouter`:
clean peers in Proof-of-Stake order (stake-weighted sampling without replacement, with
``newcomer_share`` for zero-stake peers: :mod:`p2pserve.routing`), then peers on probation
(past offenders: :mod:`p2pserve.serving.offenders`) in the same order, whatever their
stake; peers cooling off are not offered anything.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from p2pserve.membership.table import PeerEntry
from p2pserve.routing import choose_candidates
from p2pserve.serving.offenders import OffenderBook

__all__ = ["PosRouter", "Router"]


class Router(Protocol):
    """Orders the candidates of one offload round."""

    def route(self, model: str, candidates: Sequence[PeerEntry], k: int, now: float, rng: random.Random) -> list[str]:
        """At most ``k`` peer IDs from ``candidates`` (alive, accepting, affordable, not
        excluded for this request), in the order to offer the request to them."""
        ...


class PosRouter:
    """Stake-weighted order, offenders last (see the module docstring)."""

    def __init__(
        self, stake_of: Callable[[PeerEntry], int], offenders: OffenderBook, newcomer_share: float
    ) -> None:
        self.stake_of = stake_of
        self.offenders = offenders
        self.newcomer_share = newcomer_share

    def route(self, model: str, candidates: Sequence[PeerEntry], k: int, now: float, rng: random.Random) -> list[str]:
        by_id = {e.peer_id: e for e in candidates}
        clean, probation = self.offenders.split(sorted(by_id), now)
        first = choose_candidates([by_id[p] for p in clean], rng, k, self.newcomer_share, stake_of=self.stake_of)
        if len(first) >= k or not probation:
            return first
        rest = choose_candidates(
            [by_id[p] for p in probation], rng, k - len(first), self.newcomer_share, stake_of=self.stake_of
        )
        return first + rest
