"""``p2pserve simulate``: run a scenario's trace through real nodes, once per strategy.

Each strategy is one :func:`p2pserve.sim.virtual.run_virtual` (trio's ``MockClock``, the
scheduler seeded): a fresh :class:`~p2pserve.sim.cluster.Cluster` of real
:class:`~p2pserve.node.Node` s on the memory transport, each serving a
:class:`~p2pserve.sim.backend.SimBackend` of its profile. Once every node knows the others
and can pay, the trace starts: each request enters its node's
:meth:`~p2pserve.serving.service.ServeService.submit` at its arrival time, exactly as a
user's request through the API would; node joins and leaves happen at their times. A
request still unanswered ``drain_s`` after the last arrival is cancelled (a miss). Every
``sample_s`` the runner samples each node (running, queued, KV usage, free credit).

The same scenario and seed give the same records and summaries, byte for byte (virtual
time, seeded streams everywhere, trio's scheduler seeded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pserve.config import NodeConfig, parse_config
from p2pserve.errors import ServingError
from p2pserve.node import Node
from p2pserve.rng import derive
from p2pserve.serving.events import Completed, TextDelta
from p2pserve.sim.backend import SIM_FIELD, SimBackend
from p2pserve.sim.cluster import Cluster
from p2pserve.sim.judge import SimulatedJudge
from p2pserve.sim.metrics import Record
from p2pserve.sim.profiles import load_profile
from p2pserve.sim.scenario import NodeSpec, Scenario
from p2pserve.sim.strategies import BackendView, CentralPolicy, CentralRouter
from p2pserve.sim.workload import Request
from p2pserve.units import MICRO
from transports.memory import MemoryNetwork

__all__ = ["StrategyRun", "run_strategy"]

Tick = Callable[[float, int, int], None]
"""Progress: ``(virtual seconds into the trace, requests answered, requests failed)``."""


@dataclass(slots=True)
class StrategyRun:
    """What one strategy's run produced."""

    strategy: str
    records: list[Record] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    nodes: dict[int, dict[str, list[float | None]]] = field(default_factory=dict)
    """Per node index: ``running``, ``queued``, ``token_usage``, ``credit`` samples at ``times``."""


def node_config(scn: Scenario, spec: NodeSpec, strategy: str) -> NodeConfig:
    """A simulated node's config (its backend is injected: ``models`` only sets the price)."""
    server: dict[str, Any] = {
        "listen": ["/memory/0"],
        "request_timeout": 600.0,  # WWW.Serve's DEFAULT_REQUEST_TIMEOUT
        "duel_rate": spec.duel_rate if strategy == "decentralized" else 0.0,
        "duel_judges": scn.duel_judges,
        "judge": spec.judge,
        "judge_method": "fake",  # replaced by the simulated judge in prepare()
        **spec.policy,
    }
    if strategy == "single":
        server["policy"] = "local-only"
    models = [{"model_path": scn.model, "backend": "fake", "price_per_1k": spec.price_per_1k}] if spec.profile else []
    return parse_config({"server_params": server, "ledger_params": {"initial_staked": spec.stake}, "models": models})


class _Run:
    """One strategy's run, inside trio (see the module docstring)."""

    def __init__(self, scn: Scenario, strategy: str, tick: Tick | None) -> None:
        self.scn, self.strategy, self.tick = scn, strategy, tick
        self.out = StrategyRun(strategy)
        self.backends: dict[int, SimBackend] = {}
        self.slots: dict[int, int] = {}
        """Scenario node index -> cluster index."""
        self.by_peer: dict[str, int] = {}
        self.done = 0
        self.failed = 0
        self.cluster: Cluster | None = None
        self._pending: set[str] = set()
        self._all_done = trio.Event()

    # -- nodes ------------------------------------------------------------------------------

    def _backend(self, i: int) -> dict[str, Any]:
        spec = self.scn.nodes[i]
        if spec.profile is None:
            return {}
        b = SimBackend(load_profile(spec.profile), model=self.scn.model, quality_class=spec.cls,
                       seed=derive(self.scn.seed, "quality", i).getrandbits(32))
        self.backends[i] = b
        return {self.scn.model: b}

    def _prepare(self, node: Node, slot: int) -> None:
        i = next(k for k, v in self.slots.items() if v == slot)
        self.by_peer[node.peer_id] = i
        if self.strategy in ("centralized", "jsq"):
            node.serve.use_policy(CentralPolicy(self._board, node.peer_id, self.strategy), CentralRouter(self._board, self.strategy))
        if node.judge is not None:
            node.judge.method = SimulatedJudge(
                self.scn.classes, accuracy=self.scn.judge_accuracy, position_bias=self.scn.position_bias,
                seed=derive(self.scn.seed, "judge", i).getrandbits(32),
            )

    def _board(self) -> dict[str, BackendView]:
        """Every live node's backend, fresh (the centralized oracle's view)."""
        out = {}
        assert self.cluster is not None
        for node in self.cluster.alive():
            b = self.backends.get(self.by_peer.get(node.peer_id, -1))
            if b is not None:
                q = b.scheduler.load()
                out[node.peer_id] = BackendView(q.token_usage, q.running, q.waiting, b.scheduler.outstanding_tokens())
        return out

    async def _start(self, cluster: Cluster, nursery: trio.Nursery, i: int) -> None:
        backends = self._backend(i)
        for b in backends.values():
            await nursery.start(b.run)
        config = node_config(self.scn, self.scn.nodes[i], self.strategy)
        alive = cluster.alive()
        if alive:
            boot = tuple(a for n in alive[:3] for a in n.transport.listen_addrs()[:1])
            config = dataclasses.replace(config, server_params=dataclasses.replace(config.server_params, bootstrap=boot))
        if i in self.slots:
            await cluster.restart(self.slots[i], backends)
        else:
            self.slots[i] = len(cluster)
            await cluster.add(config, backends)

    async def _ready(self, cluster: Cluster) -> None:
        """Until every node knows every other and every node's ledger can pay."""
        nodes = cluster.alive()

        def ready() -> bool:
            return all(len(n.peers) >= len(nodes) - 1 and n.ledger.writable
                       and all(n.ledger.store.state.account(m.peer_id) is not None for m in nodes) for n in nodes)

        while not ready():  # noqa: ASYNC110 - polls what gossip and sync converge to, in virtual time
            await trio.sleep(0.5)

    # -- the trace --------------------------------------------------------------------------

    async def run(self) -> StrategyRun:
        scn = self.scn
        async with trio.open_nursery() as root:
            cluster = Cluster(MemoryNetwork(seed=scn.seed, default_latency=scn.latency_s, default_jitter=scn.jitter_s),
                              root, scn.seed, prepare=self._prepare)
            self.cluster = cluster
            for i in range(len(scn.nodes)):
                if i not in scn.absent:
                    await self._start(cluster, root, i)
            await self._ready(cluster)
            t0 = trio.current_time()
            end = t0 + scn.duration + scn.drain_s
            with trio.move_on_at(end):
                async with trio.open_nursery() as work:
                    work.start_soon(self._sample, t0)
                    work.start_soon(self._churn, cluster, root, t0)
                    await self._feed(cluster, work, t0)
                    if self.done + self.failed < len(scn.trace.requests):
                        await self._all_done.wait()
                    work.cancel_scope.cancel()
            self._finish_unanswered()
            if self.tick is not None:  # the bar's last word: every request counted
                self.tick(trio.current_time() - t0, self.done, self.failed)
            root.cancel_scope.cancel()
        return self.out

    async def _feed(self, cluster: Cluster, work: trio.Nursery, t0: float) -> None:
        for req in self.scn.trace.requests:
            await trio.sleep_until(t0 + req.arrival)
            work.start_soon(self._one, cluster, req, t0)

    async def _one(self, cluster: Cluster, req: Request, t0: float) -> None:
        self._pending.add(req.key)
        slot = self.slots.get(req.entry)
        node = cluster[slot] if slot is not None else None
        if node is None or node not in cluster.alive():
            self._record(Record(req.key, req.entry, req.arrival, False, error="entry node down"))
            return
        body = {"messages": [{"role": "user", "content": req.key}], "max_tokens": req.max_tokens,
                SIM_FIELD: {"prompt_tokens": req.prompt_tokens, "output_tokens": req.output_tokens, "task": req.task or ""}}
        ttft = None
        try:
            async with node.serve.submit("chat", self.scn.model, body, key=req.key) as events:
                async for ev in events:
                    if ttft is None and isinstance(ev, TextDelta) and ev.text:
                        ttft = trio.current_time() - t0 - req.arrival
                    elif isinstance(ev, Completed):
                        latency = trio.current_time() - t0 - req.arrival
                        executor = self.by_peer.get(ev.executor)
                        self._record(Record(req.key, req.entry, req.arrival, True, latency, ttft, ev.completion_tokens, executor))
        except ServingError as exc:
            self._record(Record(req.key, req.entry, req.arrival, False, error=f"{type(exc).__name__}: {exc}"[:200]))

    def _record(self, r: Record) -> None:
        self._pending.discard(r.key)
        self.out.records.append(r)
        if r.ok:
            self.done += 1
        else:
            self.failed += 1
        if self.done + self.failed == len(self.scn.trace.requests):
            self._all_done.set()

    def _finish_unanswered(self) -> None:
        by_key = {r.key: r for r in self.scn.trace.requests}
        for key in sorted(self._pending | (set(by_key) - {r.key for r in self.out.records})):
            req = by_key[key]
            self.out.records.append(Record(key, req.entry, req.arrival, False, error="unanswered at the end"))
            self.failed += 1
        self._pending.clear()
        self.out.records.sort(key=lambda r: (r.arrival, r.key))

    async def _churn(self, cluster: Cluster, root: trio.Nursery, t0: float) -> None:
        for ev in self.scn.churn:
            await trio.sleep_until(t0 + ev.time)
            if ev.action == "leave" and ev.node in self.slots:
                cluster.kill(self.slots[ev.node])
                b = self.backends.pop(ev.node, None)
                if b is not None:
                    await b.aclose()
            elif ev.action == "join":
                await self._start(cluster, root, ev.node)

    async def _sample(self, t0: float) -> None:
        assert self.cluster is not None
        while True:
            now = trio.current_time() - t0
            self.out.times.append(round(now, 3))
            for i in range(len(self.scn.nodes)):
                row = self.out.nodes.setdefault(i, {"running": [], "queued": [], "token_usage": [], "credit": []})
                b = self.backends.get(i)
                q = b.scheduler.load() if b is not None else None
                slot = self.slots.get(i)
                node = self.cluster[slot] if slot is not None else None
                row["running"].append(q.running if q else 0)
                row["queued"].append(q.waiting if q else 0)
                row["token_usage"].append(round(q.token_usage, 4) if q else 0.0)
                alive = node is not None and node in self.cluster.alive()
                row["credit"].append(round(node.ledger.free() / MICRO, 6) if alive and node is not None else None)
            if self.tick is not None:
                self.tick(now, self.done, self.failed)
            await trio.sleep(self.scn.sample_s)


async def run_strategy(scn: Scenario, strategy: str, tick: Tick | None = None) -> StrategyRun:
    """Run ``scn``'s trace with ``strategy`` (inside trio, under a virtual clock)."""
    return await _Run(scn, strategy, tick).run()
