"""Cost of membership gossip at scale: N real nodes on the memory transport, virtual time.

Each N runs in a fresh subprocess (so peak RSS is that run's): N gateway nodes (``models:
[]``, default config: status interval 2 s stretched to ``N / max_status_rate``, ttl 3
intervals) started by :func:`p2pserve.sim.cluster.open_cluster` on
``MemoryNetwork(seed=1, default_latency=0.02)`` under ``MockClock(autojump_threshold=0)``,
node 0 first and the others bootstrapping from it. No requests: the nodes only gossip for
``--seconds`` virtual seconds after the last one started. Run:

    .venv/bin/python bench/membership_scale.py --nodes 100 200 500 --seconds 60
    .venv/bin/python bench/membership_scale.py --nodes 100 --seconds 30 --profile /tmp/m.prof
    .venv/bin/python bench/membership_scale.py --nodes 50 100 200 500 --plot docs/img/membership_scale.png
    .venv/bin/python bench/membership_scale.py --nodes 200 --without-ledger   # diagnostic, see below

Prints per N: wall time (start-up, gossip, total), CPU time of the run, peak RSS, statuses published and
delivered to the receive loops, wall µs per delivered status, and how many nodes know every
other node at the end (and the share of all (node, peer) pairs known).

``--without-ledger`` is a diagnostic: every node's ledger service is replaced by an idle
task (no account opened, nothing synced or paid), so the run shows what membership gossip
and the transport cost alone. Nodes are otherwise the product's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.config import parse_config  # noqa: E402
from p2pserve.sim.cluster import open_cluster  # noqa: E402
from transports.memory import MemoryNetwork  # noqa: E402


async def _gossip_only(n: int, seconds: float, seed: int) -> dict[str, Any]:
    gateway = parse_config({"models": []})
    wall0 = time.perf_counter()
    async with open_cluster([gateway] * n, network=MemoryNetwork(seed=seed, default_latency=0.02), seed=seed) as cluster:
        wall_started, virtual_started = time.perf_counter(), trio.current_time()
        await trio.sleep(seconds)
        nodes = cluster.nodes
        known = [len(node.peers) for node in nodes]
        out = {
            "nodes": n,
            "seconds": seconds,
            "startup_virtual_s": virtual_started,
            "startup_wall_s": wall_started - wall0,
            "gossip_wall_s": time.perf_counter() - wall_started,
            "published": sum(node.gossip.published for node in nodes),
            "delivered": sum(node.gossip.received for node in nodes),
            "rejected": sum(node.gossip.rejected for node in nodes),
            "know_all": sum(k == n - 1 for k in known),
            "pairs_known": sum(known) / max(1, n * (n - 1)),
            "interval_s": nodes[0].gossip.current_interval(),
        }
        cluster.stop()
    out["total_wall_s"] = time.perf_counter() - wall0
    return out


async def _idle_service(self: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


def run_one(n: int, seconds: float, seed: int, profile: str | None, without_ledger: bool = False) -> dict[str, Any]:
    """One run in this process; returns the measurements (peak RSS of this process)."""
    if without_ledger:
        from p2pserve.ledger.service import LedgerService

        LedgerService.run = _idle_service  # type: ignore[method-assign]
    clock = trio.testing.MockClock(autojump_threshold=0)
    if profile:
        import cProfile

        prof = cProfile.Profile()
        out: dict[str, Any] = prof.runcall(trio.run, _gossip_only, n, seconds, seed, clock=clock)
        prof.dump_stats(profile)
    else:
        out = trio.run(_gossip_only, n, seconds, seed, clock=clock)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    out["cpu_s"] = usage.ru_utime + usage.ru_stime  # steadier than wall time on shared cores
    out["without_ledger"] = without_ledger
    return out


def run_fresh(n: int, seconds: float, seed: int, profile: str | None, without_ledger: bool) -> dict[str, Any]:
    """One run in a fresh interpreter, so peak RSS is per run."""
    cmd = [sys.executable, __file__, "--one", str(n), "--seconds", str(seconds), "--seed", str(seed)]
    if profile:
        cmd += ["--profile", profile]
    if without_ledger:
        cmd += ["--without-ledger"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run with {n} nodes failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("nodes", "start wall s", "gossip wall s", "total wall s", "CPU s", "peak RSS MiB", "published", "delivered",
            "µs/delivery", "know all", "pairs known", "interval s")
    print(" | ".join(head))
    for r in rows:
        per = 1e6 * r["gossip_wall_s"] / max(1, r["delivered"])
        print(" | ".join((
            str(r["nodes"]), f"{r['startup_wall_s']:.2f}", f"{r['gossip_wall_s']:.2f}", f"{r['total_wall_s']:.2f}",
            f"{r.get('cpu_s', float('nan')):.2f}", f"{r['peak_rss_mib']:.0f}", str(r["published"]), str(r["delivered"]), f"{per:.1f}",
            f"{r['know_all']}/{r['nodes']}", f"{100 * r['pairs_known']:.1f}%", f"{r['interval_s']:.1f}",
        )))


def plot(series: dict[str, list[dict[str, Any]]], path: str) -> None:
    """Per-node wall cost (ms per node per virtual second) vs N, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, rows in series.items():
        xs = [r["nodes"] for r in rows]
        ax.plot(xs, [1000 * r["total_wall_s"] / r["nodes"] / r["seconds"] for r in rows], "o-", label=label)
    ax.set_xlabel("nodes")
    ax.set_ylabel("wall ms per node per virtual second")
    ax.set_title("Gossip-only nodes on the memory transport, one process")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="*", default=[100, 200], help="node counts to run (none: only plot)")
    ap.add_argument("--seconds", type=float, default=60.0, help="virtual seconds of gossip after start-up")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", help="write a cProfile of the (single) run to this file")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--plot", help="write a PNG of per-node cost vs N to this file")
    ap.add_argument("--series", action="append", default=[], metavar="LABEL=JSON",
                    help="also draw rows that --json wrote earlier (repeatable)")
    ap.add_argument("--without-ledger", action="store_true", help="diagnostic: nodes run no ledger service")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: one run, one JSON line
    opts = ap.parse_args()
    if opts.one:
        print(json.dumps(run_one(opts.one, opts.seconds, opts.seed, opts.profile, opts.without_ledger)))
        return
    rows = []
    for n in opts.nodes:
        rows.append(run_fresh(n, opts.seconds, opts.seed, opts.profile, opts.without_ledger))
        print(f"  {n} nodes: {rows[-1]['total_wall_s']:.1f} s wall", file=sys.stderr, flush=True)
    if rows:
        print_table(rows)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1) + "\n")
    if opts.plot:
        series = {label: json.loads(Path(file).read_text()) for label, file in (s.split("=", 1) for s in opts.series)}
        if rows:
            series["this run"] = rows
        plot(series, opts.plot)


if __name__ == "__main__":
    main()
