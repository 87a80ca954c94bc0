"""The strategies the simulator compares on one trace, as policies and routers the real
serving service runs (its :class:`~p2pserve.policies.Policy` and
:class:`~p2pserve.serving.router.Router` seams). Pure: the centralized ones read a fresh
view of every backend through an injected :data:`Board`.

* ``single``: every request on its entry node's backend (``local-only``: never offload,
  never accept).
* ``centralized``: WWW.Serve's oracle (its ``simu_centralized.py``): keep the request on
  the entry node if that backend's ``token_usage`` < 0.6, else send it to the backend
  minimizing ``(token_usage, running + queued)``, with perfectly fresh state (no gossip
  delay, no refusals).
* ``jsq``: a stronger centralized reference: join the backend with the fewest
  outstanding tokens (prompt + output still to process), fresh state.
* ``decentralized``: the real protocol with the node's configured policy (gossip, stake
  routing, offers, fail-over, ledger, duels); nothing here.

A centralized strategy still moves requests over the real offer protocol (so its costs are
the network's), but it decides with global knowledge no real node has.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from p2pserve.membership.table import PeerEntry
from p2pserve.policies import (
    Decision,
    LocalModel,
    LocalOnlyPolicy,
    OfferContext,
    Offload,
    PolicyParams,
    Queue,
    RequestContext,
    RunLocal,
    Wait,
)

__all__ = ["STRATEGIES", "BackendView", "Board", "CentralPolicy", "CentralRouter", "single_policy"]


@dataclass(frozen=True, slots=True)
class BackendView:
    """A backend's state right now (what an oracle sees)."""

    token_usage: float
    running: int
    queued: int
    outstanding_tokens: int


Board = Callable[[], Mapping[str, BackendView]]
"""Every node's backend state by peer ID, fresh (the runner reads the simulated engines)."""

STRATEGIES = ("single", "centralized", "jsq", "decentralized")

TARGET_USAGE = 0.6
"""WWW.Serve's ``target_token_usage``: under it, a backend takes more work."""


def single_policy(params: PolicyParams) -> LocalOnlyPolicy:
    return LocalOnlyPolicy(params)


def _best(board: Mapping[str, BackendView], kind: str) -> list[str]:
    """Peer IDs, best first: by (token_usage, running + queued), or by outstanding tokens."""
    if kind == "jsq":
        return sorted(board, key=lambda p: (board[p].outstanding_tokens, p))
    return sorted(board, key=lambda p: (board[p].token_usage, board[p].running + board[p].queued, p))


class CentralPolicy:
    """The entry node's side of a centralized strategy (``kind``: ``centralized`` or
    ``jsq``): stay local when the oracle would, else offload (the :class:`CentralRouter`
    names the target). As an executor it accepts whatever the oracle sends it."""

    def __init__(self, board: Board, me: str, kind: str, params: PolicyParams = PolicyParams()) -> None:
        self.board, self.me, self.kind, self.params = board, me, kind, params

    def decide(self, request: RequestContext, local: Sequence[LocalModel], now: float, rng: random.Random) -> Decision:
        board = self.board()
        mine = board.get(self.me)
        if local and mine is not None:
            if self.kind == "centralized" and mine.token_usage < TARGET_USAGE:
                return RunLocal(local[0].name)
            best = _best(board, self.kind)
            if not best or best[0] == self.me or not request.has_candidates or request.offload_failed:
                return Queue(local[0].name)
        if request.has_candidates:
            return Offload()
        return Queue(local[0].name) if local else Wait(self.params.retry_interval_s)

    def accept(self, offer: OfferContext, local: Sequence[LocalModel], own_backlog: int, rng: random.Random) -> bool:
        return bool(local)

    def accepting(self, local: LocalModel, own_backlog: int) -> bool:
        return True


class CentralRouter:
    """Orders the candidates of an offload by the oracle's fresh view (best first)."""

    def __init__(self, board: Board, kind: str) -> None:
        self.board, self.kind = board, kind

    def route(self, model: str, candidates: Sequence[PeerEntry], k: int, now: float, rng: random.Random) -> list[str]:
        board = self.board()
        ids = {e.peer_id for e in candidates}
        ranked = [p for p in _best(board, self.kind) if p in ids]
        return ranked[:k]
