"""Assembly: one node = identity + transport + peer table + gossip + serving + ledger + API.

Everything runs in one nursery the node owns. :class:`Node` takes an already running
transport, so the same code runs over real libp2p (:func:`run_libp2p_node`, used by
``p2pserve join``)
and over the memory transport (tests and the simulator).
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import trio

from p2pserve.api.health import health_routes
from p2pserve.api.ledger import ledger_routes
from p2pserve.api.metrics import NodeMetrics
from p2pserve.api.openai import openai_routes
from p2pserve.api.status import ready_reasons, render_status
from p2pserve.backends.base import Backend, Kind
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.config import NodeConfig
from p2pserve.crypto import Signer
from p2pserve.duel.coordinator import DuelCoordinator
from p2pserve.duel.judge import JudgeService, backend_generators
from p2pserve.duel.machine import Deadlines as DuelDeadlines
from p2pserve.duel.methods import load_method
from p2pserve.errors import ConfigError
from p2pserve.eventlog import event
from p2pserve.identity import default_data_dir
from p2pserve.ledger.service import LedgerService
from p2pserve.ledger.store import LedgerStore
from p2pserve.membership.gossip import GossipService, LocalState
from p2pserve.membership.table import PeerEntry, PeerTable
from p2pserve.net.caps import StreamCaps
from p2pserve.policies import load_policy
from p2pserve.requestlog import RequestLog
from p2pserve.rng import derive, fresh_seed
from p2pserve.serving.events import Completed
from p2pserve.serving.replay_log import REPLAY_NAME, ReplayLog
from p2pserve.serving.service import Deadlines, ServeService
from p2pserve.transport import Transport
from p2pserve.units import MICRO
from p2pserve.wire.limits import Limits

__all__ = ["Node", "backend_specs", "run_libp2p_node", "stream_caps"]

log = logging.getLogger(__name__)


def backend_specs(config: NodeConfig) -> tuple[BackendSpec, ...]:
    """The backend of every local model in ``config`` (``models`` absent: the embedded one)."""
    return config.effective_models()


def stream_caps(limits: Limits) -> StreamCaps:
    """The transport's caps on inbound streams and buffered frame bytes, from ``limits``."""
    return StreamCaps(limits.max_streams_per_peer, limits.max_streams, limits.max_buffered_per_peer, limits.max_buffered)


class Node:
    """A p2pserve node over a running transport. Start with ``await nursery.start(node.run)``."""

    def __init__(
        self,
        config: NodeConfig,
        signer: Signer,
        transport: Transport,
        *,
        backends: dict[str, Backend] | None = None,
        ledger_store: LedgerStore | None = None,
        seed: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        replay_log: ReplayLog | None = None,
    ) -> None:
        """``backends`` replaces the ones ``config.models`` describes (tests, simulator).
        ``ledger_store`` is the node's ledger (default: an in-memory one, for tests);
        ``replay_log`` keeps the offers this node executed across restarts (default: none)."""
        if transport.peer_id != signer.peer_id:
            raise ValueError("transport and signer disagree on the peer id")
        self.config = config
        self.signer = signer
        self.transport = transport
        self.seed = seed if seed is not None else fresh_seed()
        self.clock = clock
        sp = config.server_params
        self.network_id = config.ledger_params.network_id
        self.peers = PeerTable(signer.peer_id, self.network_id, sp.peer_ttl, ttl_intervals=sp.peer_ttl / sp.status_interval)
        self.gossip = GossipService(
            transport,
            signer,
            self.peers,
            interval=sp.status_interval,
            max_status_rate=sp.max_status_rate,
            target_connections=sp.target_connections,
            bootstrap=sp.bootstrap,
            local_state=self.local_state,
            rng=derive(self.seed, "gossip"),
            clock=clock,
            genesis=config.ledger_params.network_params().digest(),
        )
        if backends is None:
            backends = {spec.model_path: build_backend(spec) for spec in backend_specs(config)}
        self.backends = backends
        lp = config.ledger_params
        self.ledger = LedgerService(
            transport,
            signer,
            ledger_store if ledger_store is not None else LedgerStore(":memory:", lp.network_params()),
            initial_staked=round(lp.initial_staked * MICRO),
            clock=clock,
            open_delay=sp.status_interval,
            claim_interval=10 * sp.status_interval,  # a safety net: payments to us wake the claimer
            limits=config.limits,
        )
        self.requests = RequestLog(signer.peer_id)
        """One log line per request of this node's users (the serving tracer)."""
        self.serve = self._serve_service(replay_log)
        self.gossip.on_status = lambda st: self.ledger.sync.peer_head(st.peer_id, st.ledger_head)
        self.duels = self._duel_coordinator()
        self.serve.on_completed = self._completed
        self.serve.on_receipt_issued = self.requests.accepted
        self.judge = self._judge_service() if sp.judge else None
        self.started_at = 0.0

    def _duel_coordinator(self) -> DuelCoordinator:
        sp = self.config.server_params
        return DuelCoordinator(
            self.serve, self.ledger, self.peers, self.transport, self.signer,
            rate=sp.duel_rate, judges=sp.duel_judges, seed=derive(self.seed, "duels").getrandbits(64),
            deadlines=DuelDeadlines(shadow_s=sp.request_timeout, judging_s=sp.judge_timeout),
            clock=self.clock, limits=self.config.limits,
        )

    def _judge_service(self) -> JudgeService:
        """The judge, with its method built on one of this node's models (ConfigError when
        the method needs a model and the node has none)."""
        sp = self.config.server_params
        name = sp.judge_model or next(iter(self.backends), None)
        deps: dict[str, Any] = {}
        if name is not None:
            if name not in self.backends:
                raise ConfigError(f"server_params.judge_model: {name!r} is not one of this node's models")
            deps["generate"], deps["generate_reference"] = backend_generators(self.backends[name])
        method = load_method(sp.judge_method, **deps)
        return JudgeService(self.transport, self.signer, self.ledger, method, clock=self.clock, limits=self.config.limits,
                            judge_s=sp.judge_timeout * 0.8)

    def _serve_service(self, replay_log: ReplayLog | None) -> ServeService:
        sp = self.config.server_params
        models = {m.model_path: m for m in self.config.effective_models()}
        return ServeService(
            self.transport,
            self.signer,
            self.network_id,
            self.peers,
            self.backends,
            load_policy(sp.policy, sp.policy_params),
            sp.policy_params,
            derive(self.seed, "serve"),
            dispatch={name: m.dispatch_params for name, m in models.items()},
            prices={name: round(m.price_per_1k * MICRO) for name, m in models.items()},
            deadlines=Deadlines(request_s=sp.request_timeout),
            wallet=self.ledger,
            stake_of=self._stake_of,
            clock=self.clock,
            replay_log=replay_log,
            tracer=self.requests,
            limits=self.config.limits,
        )

    def _completed(self, kind: Kind, model: str, body: dict[str, Any], text: str, done: Completed, key: str) -> None:
        """A user request completed: its tokens for the request log, then maybe a duel."""
        self.requests.completed(key, done)
        self.duels.consider(kind, model, body, text, done, key)

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    def _stake_of(self, entry: PeerEntry) -> int:
        """A peer's stake for PoS: what it claims, but never more than our ledger shows
        (a peer cannot buy routing by lying in its status; frozen accounts count 0),
        weighed by its duel rating when ``rating_weight`` is set."""
        stake = min(entry.status.stake, self.ledger.stake_of(entry.peer_id))
        weight = self.config.server_params.policy_params.rating_weight
        rating = self.ledger.ratings().get(entry.peer_id) if weight and stake else None
        if rating is None:
            return stake
        return round(stake * 10 ** (weight * (rating.rating - 1000.0) / 400.0))

    def local_state(self) -> LocalState:
        """What our next gossiped status says: models with load, accepting, backlog."""
        models = self.serve.model_status()
        return LocalState(
            models=models,
            accepting=any(m.accepting for m in models),
            running=sum(m.running for m in models),
            queued=sum(m.queued for m in models) if models else self.serve.backlog(),
            stake=self.ledger.stake_of(self.peer_id),
            ledger_head=self.ledger.head(),
            judge=self.judge is not None,
        )

    def api_routes(self) -> list[Any]:
        """The node's routes for :func:`p2pserve.api.app.build_app` beyond status and metrics:
        the OpenAI-compatible ``/v1`` routes (observed by :attr:`telemetry`), the ledger's,
        ``/health`` and ``/ready`` (:meth:`readiness`)."""
        api_key = self.config.server_params.api_key
        return [
            *openai_routes(self.serve, api_key=api_key, clock=self.clock, observer=self.telemetry.observe),
            *ledger_routes(self.ledger, api_key=api_key, admin_key=self.config.server_params.admin_key),
            *health_routes(self.readiness, api_key=api_key),
        ]

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every service until cancelled."""
        self.started_at = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.ledger.run)
                await nursery.start(self.serve.run)
                await nursery.start(self.duels.run)
                if self.judge is not None:
                    await nursery.start(self.judge.run)
                await nursery.start(self.gossip.run)
                sp = self.config.server_params
                event(log, "joined", network=self.network_id, peer=self.peer_id, addrs=self.transport.listen_addrs(),
                      models=sorted(self.backends), bootstrap=len(sp.bootstrap), judge=self.judge is not None)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for backend in self.backends.values():
                    await backend.aclose()

    # -- views -----------------------------------------------------------------------------

    @cached_property
    def telemetry(self) -> NodeMetrics:
        """The node's metrics registry, request histograms and recent requests (made on
        first use: nodes that never serve an API, as in the simulator, never build one)."""
        return NodeMetrics(self)

    def status(self) -> dict[str, Any]:
        """The JSON served at ``/p2pserve/status`` (see :mod:`p2pserve.api.status`)."""
        return render_status(self, recent_requests=self.telemetry.recent_json())

    def metrics(self) -> str:
        """Prometheus text exposition of the node (see :mod:`p2pserve.api.metrics`)."""
        return self.telemetry.render()

    def readiness(self) -> list[str]:
        """Why the node is not ready to serve (empty: ready), for ``GET /ready``: see
        :func:`p2pserve.api.status.ready_reasons`."""
        return ready_reasons(self, self.config.server_params.bootstrap)


async def run_libp2p_node(
    config: NodeConfig,
    signer: Signer,
    *,
    task_status: trio.TaskStatus[tuple[Node, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node over a real libp2p host with its HTTP API until cancelled.

    ``started`` with ``(node, api_base_url)`` once the host listens, the first status is
    published and the API accepts connections.
    """
    from p2pserve.api.app import build_app, serve_app
    from transports.libp2p import open_libp2p_transport

    sp = config.server_params
    host, _, port = sp.api.rpartition(":")
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    with LedgerStore.in_data_dir(data_dir, config.ledger_params.network_params(), own_account=signer.peer_id) as store:
        async with open_libp2p_transport(
            signer,
            list(sp.listen),
            announce_addrs=list(sp.announce) or None,
            max_pubsub_message=config.limits.max_pubsub_message,
            stream_caps=stream_caps(config.limits),
        ) as transport:
            node = Node(config, signer, transport, ledger_store=store, replay_log=ReplayLog(data_dir / REPLAY_NAME))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                app = build_app(
                    status=node.status, metrics=node.metrics, api_key=sp.api_key, extra_routes=node.api_routes(),
                    host=host, port=int(port), allowed_hosts=sp.allowed_hosts, allowed_origins=sp.allowed_origins,
                )
                url = await nursery.start(serve_app, app, host, int(port))
                if sp.api_key and not sp.admin_key:
                    log.warning("server_params.api_key is set without admin_key: whoever has the API key can also "
                                "stake and unstake this node's credit (set server_params.admin_key)")
                task_status.started((node, url))
