"""One chaos run: a bootstrap node, a gateway and executors (``p2pserve join`` processes on
127.0.0.1, in-process fake backends with small delays so streams last a while) under steady
streaming load through the gateway; SIGKILL executors mid-stream, restart one of them (same
data dir and ports), SIGSTOP another for a while, restart the bootstrap node (it has no
bootstrap list of its own); then the invariants (:mod:`p2pserve.testing.chaos`) and the
figures: requests sent/answered/failed clearly/bad, credit before/after, time to the full
mesh after the bootstrap restart, time to one ledger fingerprint, and how fast the restarted
executor's new blocks reached every peer.

``bench/chaos.py`` runs it full-size; ``tests/test_chaos.py`` a bounded one.
"""

from __future__ import annotations

import functools
import json
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from p2pserve.testing.chaos import ChaosNode, LedgerCheck, StreamLoad, check_ledgers, mesh_complete, poll
from p2pserve.testing.processes import wait_for

__all__ = ["ChaosParams", "ChaosResult", "run_chaos"]

MODEL = "fake-model"


@dataclass(frozen=True)
class ChaosParams:
    """The run's shape. ``executors`` >= ``killed`` + 1 (one more to SIGSTOP; any beyond stay up,
    and the first of those is the baseline for block propagation)."""

    executors: int = 4
    killed: int = 2
    """Executors SIGKILLed mid-stream; the first of them is restarted."""
    stop_s: float = 20.0
    """How long one executor stays SIGSTOPped."""
    workers: int = 6
    max_tokens: int = 24
    ttft_s: float = 0.05
    tpot_s: float = 0.04
    status_interval: float = 2.0
    peer_ttl: float = 6.0
    max_wait_s: float = 30.0
    down_s: float = 2.0
    """How long a killed executor stays down before its restart."""
    stake_blocks: int = 3
    """Blocks the restarted executor (and, as a baseline, an untouched one) write once it is
    writable (stake 1 credit, one a second): their propagation is timed."""
    settle_s: float = 5.0
    """Load kept running after the last event."""
    deadline: float = 120.0
    """Client bound on one request (past it, a hang)."""
    wait_s: float = 120.0
    """Bound on every wait for the network (ready, mid-stream, mesh, fingerprint)."""


@dataclass
class ChaosResult:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    bad: list[str] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    mid_stream_killed: int = 0
    """Requests that had received text from an executor when it was SIGKILLed."""
    mid_stream_outcomes: dict[str, int] = field(default_factory=dict)
    before: list[LedgerCheck] = field(default_factory=list)
    after: list[LedgerCheck] = field(default_factory=list)
    genesis_supply: int = 0
    bootstrap_start_s: float = 0.0
    """From spawning the bootstrap node again to its start-up banner (process start-up)."""
    mesh_after_bootstrap_restart_s: float = 0.0
    """From the restarted bootstrap node's banner to every live node listing every other."""
    fingerprint_s: float = 0.0
    """From the load's end to every live node showing one fingerprint."""
    restart_writable_s: float = 0.0
    """Restarted executor: from its start to its ledger being writable."""
    restart_block_lags: list[float] = field(default_factory=list)
    """Seconds from each new block of the restarted executor (seen at it) to every live peer holding it."""
    steady_block_lags: list[float] = field(default_factory=list)
    """The same for an executor that was never touched (the baseline)."""
    events: list[tuple[float, str]] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        def lag(xs: list[float]) -> dict[str, float | int]:
            return {"n": len(xs), "median_s": round(statistics.median(xs), 2) if xs else 0.0,
                    "max_s": round(max(xs), 2) if xs else 0.0}

        return {
            "sent": self.sent, "answered": self.answered, "failed_clearly": self.failed, "bad": len(self.bad),
            "failure_kinds": self.failure_kinds, "mid_stream_killed": self.mid_stream_killed,
            "mid_stream_outcomes": self.mid_stream_outcomes,
            "genesis_supply": self.genesis_supply / 1e6,
            "supply_before": [c.supply / 1e6 for c in self.before], "supply_after": [c.supply / 1e6 for c in self.after],
            "balances_after": [c.balances / 1e6 for c in self.after],
            "audits_ok": all(c.ok for c in self.before + self.after),
            "fingerprints_after": sorted({c.fingerprint[:16] for c in self.after}),
            "bootstrap_start_s": round(self.bootstrap_start_s, 2),
            "mesh_after_bootstrap_restart_s": round(self.mesh_after_bootstrap_restart_s, 2),
            "same_fingerprint_s": round(self.fingerprint_s, 2),
            "restart_writable_s": round(self.restart_writable_s, 2),
            "restarted_block_lag": lag(self.restart_block_lags), "steady_block_lag": lag(self.steady_block_lags),
            "wall_s": round(self.wall_s, 1),
        }


def _configs(root: Path, p: ChaosParams) -> tuple[Path, Path, Path]:
    common = {"status_interval": p.status_interval, "peer_ttl": p.peer_ttl, "duel_rate": 0.0,
              "accept_frequency": 1.0, "max_wait_s": p.max_wait_s}
    plain, gateway, executor = root / "plain.yaml", root / "gateway.yaml", root / "executor.yaml"
    plain.write_text(json.dumps({"server_params": common, "models": []}))
    gateway.write_text(json.dumps({"server_params": {**common, "policy": "always-offload"}, "models": []}))
    executor.write_text(json.dumps({"server_params": common, "models": [{
        "model_path": MODEL, "backend": "fake",
        "fake": {"model": MODEL, "ttft_s": p.ttft_s, "tpot_s": p.tpot_s, "max_running": 16},
        "dispatch_params": {"max_concurrency": 16, "target_token_usage": 1.0},
    }]}))
    return plain, gateway, executor


class _Run:
    def __init__(self, root: Path, p: ChaosParams, say: Callable[[str], None]) -> None:
        self.root, self.p, self.say = root, p, say
        self.res = ChaosResult()
        self.t0 = time.monotonic()
        plain, gateway, executor = _configs(root, p)
        self.boot = ChaosNode(root, "bootstrap", plain)
        self.gw = ChaosNode(root, "gateway", gateway)
        self.ex = [ChaosNode(root, f"executor{i}", executor) for i in range(p.executors)]
        self.nodes = [self.boot, self.gw, *self.ex]
        self.load = StreamLoad(f"{self.gw.api}/v1/chat/completions", MODEL, p.workers, p.max_tokens, p.deadline)
        self.victims: set[int] = set()
        """Requests mid-answer on an executor when it was SIGKILLed."""

    def start(self) -> None:
        """The bootstrap node, then every other node at once (pointed at it)."""
        self.boot.start(self.p.wait_s)
        for n in self.nodes[1:]:
            n.bootstrap = self.boot.addr
            n.spawn()
        for n in self.nodes[1:]:
            n.ready(self.p.wait_s)

    def event(self, what: str) -> None:
        at = time.monotonic() - self.t0
        self.res.events.append((at, what))
        self.say(f"[{at:6.1f} s] {what}")

    def live(self) -> list[ChaosNode]:
        return [n for n in self.nodes if n.alive]

    def ready(self) -> bool:
        total = len(self.nodes)
        for n in self.nodes:
            st = n.get("/p2pserve/status")
            if not st["ledger"]["writable"] or len(n.get("/p2pserve/ledger/heads")["heads"]) != total:
                return False
        served = sum(MODEL in p["models"] for p in self.gw.get("/p2pserve/status")["peers"])
        return served == len(self.ex) and mesh_complete(self.nodes)

    # --- the chaos script ------------------------------------------------------------------

    async def script(self, stop: trio.Event) -> None:
        p, load = self.p, self.load
        try:
            await poll(lambda: sum(o.kind == "answered" for o in load.outcomes) >= 2 * p.workers, p.wait_s,
                       "the load to get answers")
            self.event(f"load running: {len(load.outcomes)} requests done")
            killed = self.ex[: p.killed]
            stopped = self.ex[p.killed]
            steady = self.ex[p.killed + 1] if len(self.ex) > p.killed + 1 else None
            for n in killed:
                await poll(functools.partial(self._mid_stream, n), p.wait_s, f"a stream mid-answer on {n.name}", step=0.02)
                mid = load.mid_stream_on(n.peer_id)
                victims = {rid for rid, f in load.in_flight.items() if f.executor == n.peer_id and f.deltas > 0}
                n.kill()
                self.victims |= victims
                self.res.mid_stream_killed += mid
                self.event(f"SIGKILL {n.name} with {mid} stream(s) mid-answer")
            await trio.sleep(p.down_s)
            restarted = killed[0]
            height = await self._height_at_peers(restarted)
            t_restart = time.monotonic()
            await trio.to_thread.run_sync(restarted.start, p.wait_s)
            self.event(f"restarted {restarted.name} (same data dir and ports)")
            await poll(lambda: restarted.get("/p2pserve/ledger")["writable"], p.wait_s, f"{restarted.name} writable",
                       step=0.1)
            self.res.restart_writable_s = time.monotonic() - t_restart
            async with trio.open_nursery() as watch:
                watch.start_soon(self._watch_blocks, restarted, height, self.res.restart_block_lags)
                watch.start_soon(self._stake, restarted)  # blocks of its own, whether or not it gets work
                if steady is not None:
                    watch.start_soon(self._watch_blocks, steady, None, self.res.steady_block_lags)
                    watch.start_soon(self._stake, steady)
                await poll(lambda: load.mid_stream_on(stopped.peer_id) > 0, p.wait_s,
                           f"a stream mid-answer on {stopped.name}", step=0.02)
                stopped.signal(signal.SIGSTOP)
                self.event(f"SIGSTOP {stopped.name} with {load.mid_stream_on(stopped.peer_id)} stream(s) mid-answer")
                await trio.sleep(p.stop_s)
                stopped.signal(signal.SIGCONT)
                self.event(f"SIGCONT {stopped.name} after {p.stop_s:.0f} s")
                await self._restart_bootstrap()
                watch.cancel_scope.cancel()
            self.event(f"keeping the load {p.settle_s:.0f} s more")
            await trio.sleep(p.settle_s)
            self._tally_mid_stream()
        finally:
            stop.set()

    async def _restart_bootstrap(self) -> None:
        p, boot = self.p, self.boot
        boot.kill()
        self.event("SIGKILL bootstrap")
        others = [n for n in self.live()]
        gone = await poll(lambda: all(boot.peer_id not in n.peers() for n in others), p.wait_s,
                          "every node to forget the bootstrap node")
        self.event(f"every node forgot the bootstrap node ({gone:.1f} s)")
        t = time.monotonic()
        await trio.to_thread.run_sync(boot.start, p.wait_s)
        self.res.bootstrap_start_s = time.monotonic() - t
        t = time.monotonic()
        self.event(f"restarted bootstrap (no --bootstrap of its own), up in {self.res.bootstrap_start_s:.1f} s")
        last: list[str] = []

        def full() -> bool:
            nonlocal last
            missing = self._missing()
            if missing != last:
                last = missing
                self.event("mesh: " + ("; ".join(missing) or "full"))
            return not missing

        await poll(full, p.wait_s, "the full mesh after the bootstrap restart", step=0.1)
        self.res.mesh_after_bootstrap_restart_s = time.monotonic() - t
        self.event(f"full mesh {self.res.mesh_after_bootstrap_restart_s:.1f} s after the bootstrap node was up")

    def _mid_stream(self, node: ChaosNode) -> bool:
        return self.load.mid_stream_on(node.peer_id) > 0

    def _missing(self) -> list[str]:
        """For each live node that does not list every other live node: whom it lacks."""
        live = self.live()
        names = {n.peer_id: n.name for n in self.nodes}
        out = []
        for n in live:
            lacks = {m.peer_id for m in live} - {n.peer_id} - n.peers()
            if lacks:
                out.append(f"{n.name} lacks {', '.join(sorted(names[x] for x in lacks))}")
        return out

    async def _height_at_peers(self, node: ChaosNode) -> int:
        """The highest height of ``node``'s chain any live node holds."""
        def read() -> int:
            best = 0
            for n in self.live():
                h = n.get("/p2pserve/ledger/heads")["heads"].get(node.peer_id)
                best = max(best, h[0] if h else 0)
            return best
        return await trio.to_thread.run_sync(read)

    async def _watch_blocks(self, node: ChaosNode, after: int | None, lags: list[float]) -> None:
        """For each new height of ``node``'s chain seen at ``node`` (above ``after``), the
        seconds until every other live node holds that height; when cancelled, the heights
        still missing somewhere count with the time they have waited so far (a lower bound)."""
        seen: dict[int, float] = {}
        done: set[int] = set()
        try:
            while True:
                try:
                    own, others = await trio.to_thread.run_sync(self._heights_of, node)
                except httpx.HTTPError:
                    await trio.sleep(0.1)
                    continue
                now = time.monotonic()
                if after is None:
                    after = own
                if own > after and own not in seen:
                    seen[own] = now
                    self.say(f"    {node.name} wrote height {own}; peers hold {others}")
                for h, t in seen.items():
                    if h not in done and others and min(others) >= h:
                        done.add(h)
                        lags.append(now - t)
                        if now - t > 2:
                            self.say(f"    {node.name} height {h} reached every peer after {now - t:.1f} s")
                await trio.sleep(0.1)
        finally:
            now = time.monotonic()
            for h, t in seen.items():
                if h not in done:
                    lags.append(now - t)
                    self.say(f"    {node.name} height {h} still missing on a peer after {now - t:.1f} s")

    async def _stake(self, node: ChaosNode) -> None:
        """Write ``stake_blocks`` blocks on ``node``'s chain (stake 1 credit), one a second."""
        for _ in range(self.p.stake_blocks):
            await trio.sleep(1.0)
            r = await trio.to_thread.run_sync(lambda: httpx.post(node.api + "/p2pserve/ledger/stake", json={"amount": 1},
                                                                 timeout=30))
            r.raise_for_status()

    def _heights_of(self, node: ChaosNode) -> tuple[int, list[int]]:
        own = node.get("/p2pserve/ledger/heads", timeout=2)["heads"].get(node.peer_id, [0])[0]
        others = []
        for n in self.live():
            if n is not node:
                h = n.get("/p2pserve/ledger/heads", timeout=2)["heads"].get(node.peer_id)
                others.append(h[0] if h else 0)
        return int(own), others

    def _tally_mid_stream(self) -> None:
        for o in self.load.outcomes:
            if o.rid in self.victims:
                self.res.mid_stream_outcomes[o.kind] = self.res.mid_stream_outcomes.get(o.kind, 0) + 1

    # --- the run -------------------------------------------------------------------------------

    async def main(self) -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.load.run, stop)
            await self.script(stop)

    def tally(self) -> None:
        res = self.res
        res.sent = len(self.load.outcomes)
        for o in self.load.outcomes:
            if o.kind == "answered":
                res.answered += 1
            elif o.kind == "failed":
                res.failed += 1
                res.failure_kinds[f"{o.status} {o.detail}"] = res.failure_kinds.get(f"{o.status} {o.detail}", 0) + 1
            else:
                res.bad.append(f"{o.detail} (status {o.status}, executors {o.executors}, {o.seconds:.1f} s)")


def run_chaos(root: Path, p: ChaosParams, say: Callable[[str], None] = print,
              at_end: Callable[[list[ChaosNode]], None] | None = None) -> ChaosResult:
    """Run the whole scenario in ``root`` (node data dirs, configs, logs) and return its
    figures; ``at_end`` gets the live nodes once they agree, before every node is stopped.
    Raises AssertionError when the network does not reach a state it must (ready, mesh, one
    fingerprint) within ``p.wait_s``."""
    run = _Run(root, p, say)
    res = run.res
    try:
        run.start()
        t_ready = time.monotonic()
        wait_for(run.ready, p.wait_s, "every node writable, in the full mesh, the gateway seeing every executor",
                 ignore=(httpx.HTTPError,))
        run.event(f"network ready ({time.monotonic() - t_ready:.1f} s)")
        res.before = check_ledgers(run.nodes)
        res.genesis_supply = res.before[0].supply
        trio.run(run.main)
        run.tally()
        names = {n.peer_id: n.name for n in run.nodes}
        (root / "outcomes.json").write_text(json.dumps([
            {"t": round(o.started - run.t0, 2), "s": round(o.seconds, 2), "kind": o.kind, "status": o.status,
             "detail": o.detail, "executors": [names.get(e, e) for e in o.executors], "deltas": o.deltas}
            for o in run.load.outcomes], indent=0))
        run.event(f"load stopped: {res.sent} sent, {res.answered} answered, {res.failed} failed clearly, {len(res.bad)} bad")
        t = time.monotonic()
        while True:  # a late pay or claim may land between the fingerprints and the audits: again
            wait_for(lambda: len({n.fingerprint() for n in run.live()}) == 1, p.wait_s, "one ledger fingerprint",
                     poll=0.1, ignore=(httpx.HTTPError,))
            res.fingerprint_s = time.monotonic() - t
            res.after = check_ledgers(run.live())
            if len({c.fingerprint for c in res.after}) == 1 or time.monotonic() - t > p.wait_s:
                break
        run.event(f"one fingerprint on every live node {res.fingerprint_s:.1f} s after the load stopped")
        if at_end is not None:
            at_end(run.live())
        res.wall_s = time.monotonic() - run.t0
        return res
    finally:
        for n in run.nodes:
            n.stop()
