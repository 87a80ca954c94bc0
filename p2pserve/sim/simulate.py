"""Run a scenario under every strategy and write what it measured.

Output directory (default ``sim-results/<scenario>``):

* ``result.json``: the scenario; ``summary.<strategy>`` (:class:`~p2pserve.sim.metrics.Summary`:
  ``slo_attainment``, ``slo_curve``, latency and TTFT percentiles, ``completed``, ``failed``,
  ...); ``records.<strategy>`` (one per request); ``classes.<strategy>.<class>`` (nodes,
  requests executed and mean credit gained per node of each class);
* ``nodes/node<i>.json``: per node, per strategy, the sampled series (running, queued, KV
  usage, free credit) with their times;
* ``slo.png``, ``latency.png``, ``running.png``, ``credit.png`` (:mod:`p2pserve.sim.report`).

Summaries are rounded and written with sorted keys, so two runs of one scenario and seed
give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2pserve.sim.metrics import summarize
from p2pserve.sim.runner import StrategyRun, Tick, run_strategy
from p2pserve.sim.scenario import Scenario
from p2pserve.sim.virtual import run_virtual

__all__ = ["build_result", "run_scenario", "write_outputs"]

TickFactory = Callable[[str], Tick | None]


def run_scenario(scn: Scenario, strategies: Sequence[str], tick: TickFactory | None = None) -> dict[str, StrategyRun]:
    """Each strategy's run of ``scn`` (each in its own virtual-time trio run, same seed)."""
    runs = {}
    jobs = [(s, s, scn) for s in strategies]
    jobs += [(label, "decentralized", variant) for label, variant in scn.sweep]
    for label, strategy, variant in jobs:
        ticker = tick(label) if tick is not None else None
        run = run_virtual(lambda v=variant, s=strategy, t=ticker: run_strategy(v, s, t), seed=scn.seed)  # type: ignore[misc]
        run.strategy = label
        runs[label] = run
    return runs


def build_result(scn: Scenario, runs: dict[str, StrategyRun]) -> dict[str, Any]:
    """``result.json``'s content."""
    summaries, records, classes = {}, {}, {}
    for name, run in runs.items():
        summary = summarize(run.records, scn.duration, len(scn.nodes), thresholds=scn.thresholds,
                            ttft_slo=scn.ttft_slo, tpot_slo=scn.tpot_slo)
        summaries[name] = summary.as_dict()
        records[name] = [_record(r) for r in run.records]
        classes[name] = _by_class(scn, run)
    return {
        "scenario": scn.name,
        "description": scn.description,
        "seed": scn.seed,
        "requests": len(scn.trace.requests),
        "duration_s": scn.duration,
        "nodes": [{"index": i, "profile": n.profile, "class": n.cls, "stake": n.stake,
                   "policy": dict(n.policy), "judge": n.judge, "duel_rate": n.duel_rate} for i, n in enumerate(scn.nodes)],
        "churn": [{"at": c.time, "node": c.node, "event": c.action} for c in scn.churn],
        "summary": summaries,
        "records": records,
        "classes": classes,
    }


def _by_class(scn: Scenario, run: StrategyRun) -> dict[str, dict[str, Any]]:
    """Per node class: how many nodes, requests they executed, mean free credit gained per node."""
    out: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(scn.nodes):
        row = out.setdefault(node.cls, {"nodes": 0, "executed": 0, "credit_gain": 0.0})
        row["nodes"] += 1
        row["executed"] += sum(1 for r in run.records if r.ok and r.executor == i)
        credit = [c for c in run.nodes.get(i, {}).get("credit", []) if c is not None]
        row["credit_gain"] += credit[-1] - credit[0] if credit else 0.0
    for row in out.values():
        row["credit_gain"] = round(row["credit_gain"] / row["nodes"], 3)
    return out


def _record(r: Any) -> dict[str, Any]:
    d = dataclasses.asdict(r)
    for k in ("latency", "ttft", "arrival"):
        if d[k] is not None:
            d[k] = round(d[k], 6)
    return d


def series_of(scn: Scenario, runs: dict[str, StrategyRun]) -> dict[str, dict[str, Any]]:
    """Per strategy: the sample times and each node's series (with its class)."""
    return {
        name: {"times": run.times,
               "nodes": {f"node{i}": {**cols, "class": scn.nodes[i].cls} for i, cols in sorted(run.nodes.items())}}
        for name, run in runs.items()
    }


def write_outputs(scn: Scenario, runs: dict[str, StrategyRun], out: Path, *, plots: bool = True) -> dict[str, Any]:
    """Write result.json, the per-node series and the plots into ``out``; the result."""
    out.mkdir(parents=True, exist_ok=True)
    result = build_result(scn, runs)
    (out / "result.json").write_text(json.dumps(result, sort_keys=True, indent=1) + "\n")
    series = series_of(scn, runs)
    nodes_dir = out / "nodes"
    nodes_dir.mkdir(exist_ok=True)
    for i in range(len(scn.nodes)):
        per = {s: {"times": series[s]["times"], **series[s]["nodes"].get(f"node{i}", {})} for s in series}
        (nodes_dir / f"node{i}.json").write_text(json.dumps(per, sort_keys=True) + "\n")
    if plots:
        from p2pserve.sim.report import plot_all

        plot_all(result, series, out)
    return result
