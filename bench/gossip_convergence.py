"""Gossip convergence of real libp2p nodes: one `p2pserve join` process per node on 127.0.0.1.

Node 0 starts first; every other node is started at once with only node 0's multiaddr.
Measured: the time from the last node's banner until every node lists all N-1 others
(full convergence), and when each node first saw everyone. Run:

    .venv/bin/python bench/gossip_convergence.py            # 10 and 30 nodes
    .venv/bin/python bench/gossip_convergence.py --nodes 10

Prints a table with the ratio of convergence time to the status interval, and writes a PNG
of the share of (node, peer) pairs known over time to bench/results/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.testing.processes import read_banner, spawn_join, stop_processes  # noqa: E402


def run(n: int, interval: float, timeout: float) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix=f"p2pserve-bench-{n}-"))
    cfg = tmp / "node.yaml"
    cfg.write_text(f"server_params:\n  status_interval: {interval}\n  peer_ttl: {3 * interval}\nmodels: []\n")
    procs: list[subprocess.Popen[str]] = []

    def args(i: int, boot: str | None) -> list[str]:
        a = ["--config", str(cfg), "--data-dir", str(tmp / f"n{i}"), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]
        return a + (["--bootstrap", boot] if boot else [])

    try:
        procs.append(spawn_join(args(0, None), stderr=subprocess.DEVNULL))
        first = read_banner(procs[0])
        boot = first["listening"][0]
        for i in range(1, n):
            procs.append(spawn_join(args(i, boot), stderr=subprocess.DEVNULL))
        banners = [first] + [read_banner(p, timeout=120) for p in procs[1:]]
        t0 = time.monotonic()
        apis = [b["api"][0] for b in banners]
        full_at: dict[int, float] = {}
        curve: list[tuple[float, float]] = []
        client = httpx.Client(timeout=5)

        def peers(api: str) -> int:
            try:
                return len(client.get(f"{api}/p2pserve/status").json()["peers"])
            except (httpx.HTTPError, ValueError, KeyError):
                return 0

        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() - t0 < timeout:
                counts = list(pool.map(peers, apis))
                now = time.monotonic() - t0
                curve.append((now, sum(counts) / (n * (n - 1))))
                for i, c in enumerate(counts):
                    if c == n - 1 and i not in full_at:
                        full_at[i] = now
                if len(full_at) == n:
                    break
                time.sleep(0.1)
        client.close()
        done = len(full_at) == n
        times = sorted(full_at.values())
        return {
            "nodes": n,
            "interval": interval,
            "converged": done,
            "full_s": max(times) if done else float("nan"),
            "p50_node_s": times[len(times) // 2] if times else float("nan"),
            "curve": curve,
        }
    finally:
        stop_processes(procs, timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, action="append", help="network sizes (default: 10 and 30)")
    ap.add_argument("--interval", type=float, default=2.0, help="base status interval in seconds (the default config)")
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    opts = ap.parse_args()
    results = [run(n, opts.interval, opts.timeout) for n in (opts.nodes or [10, 30])]
    print(f"{'nodes':>5} {'interval s':>10} {'converged':>9} {'full s':>7} {'p50 node s':>10} {'full/interval':>13}")
    for r in results:
        print(f"{r['nodes']:>5} {r['interval']:>10.1f} {str(r['converged']):>9} {r['full_s']:>7.2f} "
              f"{r['p50_node_s']:>10.2f} {r['full_s'] / r['interval']:>13.2f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        opts.out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for r in results:
            xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(xs, ys, label=f"{r['nodes']} nodes")
        ax.set_xlabel("seconds after the last node started")
        ax.set_ylabel("share of peers known")
        ax.set_title(f"gossip convergence, libp2p on loopback, status every {opts.interval:g} s")
        ax.legend()
        fig.tight_layout()
        path = opts.out / "gossip_convergence.png"
        fig.savefig(path, dpi=120)
        print(f"plot: {path}")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
