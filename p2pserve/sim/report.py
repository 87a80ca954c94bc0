"""The plots of a simulated run (PNG, matplotlib's Agg backend: no display needed).

* ``slo.png``: global SLO attainment against the latency threshold, one curve per strategy;
* ``latency.png``: end-to-end latency of each request against its arrival time (a rolling
  median per strategy), with node joins and leaves marked;
* ``running.png``: requests running on each node's backend over time (decentralized run,
  or the last strategy run);
* ``credit.png``: mean free credit per node class over time (decentralized run).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_all"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write ``path`` (PNG) and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(result: Mapping[str, Any], series: Mapping[str, Mapping[str, Any]], out: Path) -> list[Path]:
    """Write the plots of ``result`` (result.json's content) and ``series`` (per strategy,
    the sampled node series) into ``out``; the files written."""
    written = [_slo(result, out / "slo.png"), _latency(result, out / "latency.png")]
    run = series.get("decentralized") or (next(iter(series.values())) if series else None)
    if run:
        written.append(_running(run, out / "running.png"))
        if any(n.get("credit") for n in run["nodes"].values()):
            written.append(_credit(run, out / "credit.png"))
    return written


def _slo(result: Mapping[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, summary in result["summary"].items():
        curve = summary["slo_curve"]
        ax.plot([t for t, _ in curve], [a for _, a in curve], label=f"{name} (mean {summary['slo_attainment']:.3f})")
    ax.set_xlabel("latency threshold T (s)")
    ax.set_ylabel("share of all requests answered within T")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{result['scenario']}: global SLO attainment")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def _rolling_median(points: Sequence[tuple[float, float]], window: int = 25) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i in range(len(points)):
        chunk = sorted(y for _, y in points[max(0, i - window + 1) : i + 1])
        xs.append(points[i][0])
        ys.append(chunk[len(chunk) // 2])
    return xs, ys


def _latency(result: Mapping[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, records in result["records"].items():
        pts = sorted((r["arrival"], r["latency"]) for r in records if r["ok"])
        if pts:
            ax.plot(*_rolling_median(pts), label=name)
    for ev in result.get("churn", []):
        ax.axvline(ev["at"], color="red" if ev["event"] == "leave" else "green", alpha=0.4, linestyle="--")
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("end-to-end latency (s), rolling median")
    ax.set_title(f"{result['scenario']}: latency over time (dashed: node leaves red, joins green)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def _running(run: Mapping[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    t = run["times"]
    for name, node in sorted(run["nodes"].items()):
        ax.plot(t[: len(node["running"])], node["running"], label=name, linewidth=0.9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests running on the backend")
    ax.set_title("running requests per node")
    if len(run["nodes"]) <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _credit(run: Mapping[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    t = run["times"]
    by_class: dict[str, list[list[float]]] = defaultdict(list)
    for node in run["nodes"].values():
        by_class[node["class"]].append(node["credit"])
    for cls, rows in sorted(by_class.items()):
        n = min(len(r) for r in rows)
        xs, ys = [], []
        for i in range(n):
            present = [r[i] for r in rows if r[i] is not None]  # a node that is down has no credit sample
            if present:
                xs.append(t[i])
                ys.append(sum(present) / len(present))
        ax.plot(xs, ys, label=cls)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean free credit per node")
    ax.set_title("credit per node class")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)
