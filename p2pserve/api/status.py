"""What ``/p2pserve/status`` (JSON) and ``/metrics`` (Prometheus text) show of a running node.

Both are rendered from the node's services on each request: cheap, no I/O, nothing cached.
The node passes itself as a :class:`NodeView` (the attributes read here and nothing more).
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["NodeView", "duel_record", "offloading", "render_metrics", "render_status"]


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


def render_status(node: NodeView) -> dict[str, Any]:
    """The JSON served at ``/p2pserve/status``."""
    now = trio.current_time()
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


def render_metrics(node: NodeView) -> str:
    """Prometheus text exposition of the node's counters and gauges."""
    lines: list[str] = []

    def one(name: str, kind: str, value: float) -> None:
        lines.extend((f"# TYPE p2pserve_{name} {kind}", f"p2pserve_{name} {value}"))

    one("peers", "gauge", len(node.peers))
    one("connected_peers", "gauge", len(node.transport.connected_peers()))
    one("status_published_total", "counter", node.gossip.published)
    one("status_received_total", "counter", node.gossip.received)
    for name, value in dataclasses.asdict(node.serve.counters).items():
        one(f"{name}_total", "counter", value)
    one("ledger_free_credits", "gauge", node.ledger.free() / MICRO)
    one("ledger_staked_credits", "gauge", node.ledger.staked() / MICRO)
    one("ledger_blocks", "gauge", node.ledger.store.count())
    one("duels_started_total", "counter", node.duels.counters.started)
    one("duels_settled_total", "counter", node.duels.counters.settled)
    one("ledger_verdicts", "gauge", node.ledger.store.state.verdict_count())
    for m in node.serve.model_status():
        labels = f'{{model="{m.name}"}}'
        lines += [f"p2pserve_model_running{labels} {m.running}", f"p2pserve_model_queued{labels} {m.queued}"]
    return "\n".join(lines) + "\n"
