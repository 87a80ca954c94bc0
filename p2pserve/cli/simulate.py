"""``p2pserve simulate SCENARIO.yaml``: the paper's experiments on the real node code, in
virtual time, on one machine (``docs/simulation.md``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from p2pserve.cli.common import fail, usage_error
from p2pserve.errors import ConfigError
from p2pserve.sim.runner import Tick
from p2pserve.sim.scenario import load_scenario, strategy_list
from p2pserve.sim.simulate import run_scenario, write_outputs

__all__ = ["simulate"]


def simulate(
    scenario: Path = typer.Argument(..., exists=True, dir_okay=False, help="Scenario YAML (see configs/sim/)."),
    out: Path | None = typer.Option(None, "--out", help="Output directory [default: sim-results/<scenario name>]."),
    seed: int | None = typer.Option(None, "--seed", help="Override the scenario's seed."),
    strategies: str | None = typer.Option(None, "--strategies", help="Comma-separated: single,centralized,jsq,decentralized."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
) -> None:
    """Run a scenario's trace through real nodes under each strategy, in virtual time."""
    console = Console()
    try:
        scn, _ = load_scenario(scenario, seed)
        chosen = strategy_list(strategies.split(",")) if strategies else scn.strategies
    except ConfigError as exc:
        raise usage_error(str(exc)) from None
    if plots and importlib.util.find_spec("matplotlib") is None:
        raise fail("the plots need matplotlib: pip install 'p2pserve[sim]' (or pass --no-plots)")
    out = out or Path("sim-results") / scn.name
    console.print(f"[bold]{scn.name}[/]: {len(scn.nodes)} nodes, {len(scn.trace.requests)} requests over "
                  f"{scn.duration:.0f} s (+{scn.drain_s:.0f} s to drain), seed {scn.seed}")
    total = scn.duration + scn.drain_s
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} virtual s"),
                  TimeElapsedColumn(), console=console) as progress:

        def tick_for(name: str) -> Tick:
            task = progress.add_task(name, total=total)

            def tick(now: float, done: int, failed: int) -> None:
                progress.update(task, completed=min(now, total), description=f"{name}: {done} answered, {failed} failed")

            return tick

        runs = run_scenario(scn, chosen, tick_for)
    result = write_outputs(scn, runs, out, plots=plots)
    table = Table(title=f"{scn.name}: global SLO attainment (mean over {len(scn.thresholds)} thresholds), latency")
    for col in ("strategy", "SLO", "done", "failed", "p50 s", "p90 s", "TTFT p50 s"):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=col == "strategy")
    for name, summ in result["summary"].items():
        table.add_row(name, f"{summ['slo_attainment']:.3f}", str(summ["completed"]), str(summ["failed"]),
                      fmt(summ["latency_p50"]), fmt(summ["latency_p90"]), fmt(summ["ttft_p50"]))
    console.print(table)
    if len({n.cls for n in scn.nodes}) > 1:
        console.print(class_table(result))
    console.print(f"results in {out}/ (result.json, nodes/, *.png)")


def class_table(result: dict[str, Any]) -> Table:
    """Per node class, under the decentralized runs: requests executed and credit gained."""
    table = Table(title="per node class (decentralized runs)")
    for col in ("strategy", "class", "nodes", "executed", "credit/node"):
        table.add_column(col, justify="left" if col in ("strategy", "class") else "right", no_wrap=col == "strategy")
    for name, classes in result["classes"].items():
        if name.startswith("decentralized"):
            for cls, row in sorted(classes.items()):
                table.add_row(name, cls, str(row["nodes"]), str(row["executed"]), f"{row['credit_gain']:+.1f}")
    return table


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
