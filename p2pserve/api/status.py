"""What ``/p2pserve/status`` (JSON) and ``/ready`` show of a running node.

Both are rendered from the node's services on each request: cheap, no I/O, nothing cached.
The node passes itself as a :class:`NodeView` (the attributes read here and nothing more).
``/metrics`` is :mod:`p2pserve.api.metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from p2pserve.api.ledger import ledger_summary
from p2pserve.duel.coordinator import DuelCoordinator
from p2pserve.ledger.service import LedgerService
from p2pserve.membership.gossip import GossipService
from p2pserve.membership.table import PeerTable
from p2pserve.serving.service import ServeService
from p2pserve.transport import Transport
from p2pserve.units import MICRO

__all__ = ["NodeView", "backends_down", "duel_record", "offloading", "ready_reasons", "render_status"]


class NodeView(Protocol):
    """The parts of a node that status and metrics read."""

    @property
    def peer_id(self) -> str: ...

    network_id: str
    transport: Transport
    peers: PeerTable
    gossip: GossipService
    serve: ServeService
    ledger: LedgerService
    duels: DuelCoordinator
    started_at: float


def render_status(node: NodeView, *, recent_requests: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The JSON served at ``/p2pserve/status``; ``recent_requests``: the API's last requests,
    newest first (:meth:`p2pserve.api.metrics.NodeMetrics.recent_json`)."""
    now = trio.current_time()
    down = backends_down(node)
    return {
        "peer_id": node.peer_id,
        "network_id": node.network_id,
        "addrs": node.transport.listen_addrs(),
        "models": [
            {
                "name": m.name,
                "running": m.running,
                "queued": m.queued,
                "token_usage": m.token_usage,
                "accepting": m.accepting,
                "price_per_1k": m.price_per_1k / MICRO,
                "up": m.name not in down,
            }
            for m in node.serve.model_status()
        ],
        "served": dataclasses.asdict(node.serve.counters),
        "ledger": ledger_summary(node.ledger),
        "ledger_fingerprint": node.ledger.fingerprint(),
        "offenders": node.serve.offenders.snapshot(now),
        "offloading": offloading(node),
        "duels": duel_record(node),
        "ratings": {peer: r.as_dict() for peer, r in sorted(node.ledger.ratings().items())},
        "uptime_s": round(now - node.started_at, 3),
        "connected_peers": sorted(node.transport.connected_peers()),
        "peers": _peers(node, now),
        "gossip": {"published": node.gossip.published, "received": node.gossip.received, "rejected": node.gossip.rejected},
        "recent_requests": list(recent_requests),
    }


def _peers(node: NodeView, now: float) -> list[dict[str, Any]]:
    connected = node.transport.connected_peers()
    peers = []
    for e in node.peers.entries():
        s = e.status
        peers.append(
            {
                "peer_id": s.peer_id,
                "addrs": list(s.addrs),
                "models": [m.name for m in s.models],
                "prices": {m.name: m.price_per_1k / MICRO for m in s.models},
                "reached": node.peers.routable(s.peer_id),
                "load": {"running": s.running, "queued": s.queued, "token_usage": {m.name: m.token_usage for m in s.models}},
                "accepting": s.accepting,
                "judge": s.judge,
                "stake": s.stake / MICRO,
                "last_seen_s": round(now - e.last_seen, 3),
                "connected": s.peer_id in connected,
                "frozen": node.peers.is_frozen(s.peer_id),
            }
        )
    return peers


def duel_record(node: NodeView) -> dict[str, int]:
    """This node's duels: started as requester, settled, and from the ledger's counted
    verdicts, won, lost and tied as an executor and judged as a judge."""
    me = node.peer_id
    won = lost = tied = judged = 0
    for v in node.ledger.store.state.verdicts():
        judged += v.judge == me
        if me in (v.a, v.b):
            if v.outcome == "tie":
                tied += 1
            elif (v.outcome == "A") == (v.a == me):
                won += 1
            else:
                lost += 1
    c = node.duels.counters
    return {"started": c.started, "settled": c.settled, "abandoned": c.abandoned, "won": won, "lost": lost,
            "tied": tied, "judged": judged}


def offloading(node: NodeView) -> dict[str, Any]:
    """Whether the node can offload now, and if not, why."""
    if not node.ledger.can_afford(1):
        return {"possible": False, "reason": "no free credit to pay peers: requests run on local models only"}
    if not any(e.status.accepting for e in node.peers.entries()):
        return {"possible": False, "reason": "no peer is accepting work right now"}
    return {"possible": True, "reason": None}


def backends_down(node: NodeView) -> Mapping[str, str]:
    """Local models whose backend failed its last check, with the backend's error (see
    :meth:`p2pserve.serving.local.LocalModels.check`)."""
    return node.serve.local.down


def ready_reasons(node: NodeView, bootstrap: Sequence[str]) -> list[str]:
    """Why the node is not ready to serve (empty: ready), for ``GET /ready``.

    Ready means: it has joined a network (it knows at least one peer, or it was given no
    bootstrap address: the first node of a network is ready alone) and no local backend is
    marked down (:func:`backends_down`: checked at start and every load interval)."""
    reasons = []
    if bootstrap and not len(node.peers):
        reasons.append(f"no peer known yet (bootstrapping from {len(bootstrap)} address{'es' if len(bootstrap) != 1 else ''})")
    for model, why in sorted(backends_down(node).items()):
        reasons.append(f"backend for model {model!r} is down: {why}")
    return reasons
