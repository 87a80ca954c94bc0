"""Does dueling add latency for the user? Side by side in one run, one network.

Six ``p2pserve join`` processes on 127.0.0.1 (real libp2p): two gateways with no model, one
with ``duel_rate: 0`` and one with ``duel_rate: 1.0`` (every request it offloads becomes a
duel: a shadow offer to a second executor, an order, a judge), two executors on the
in-process fake backend (``ttft``/``tpot`` as given), a judge with the ``fake`` method, and a
spare executor so shadows find a free one. Streamed chat completions are sent alternately
to the two gateways; the latency the user sees (time to first token, total) is compared.

Run: ``.venv/bin/python bench/duel_overhead.py [--requests 100] [--tpot 0.01]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.testing.processes import read_banner, spawn_join, stop_processes  # noqa: E402

MODEL = "fake-model"


def config(tmp: Path, name: str, server: str, models: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"server_params:\n  status_interval: 0.5\n  peer_ttl: 2.0\n  accept_frequency: 1.0\n{server}"
                    f"ledger_params:\n  initial_staked: 10\n{models}")
    return path


def one(client: httpx.Client, api: str, i: int) -> tuple[float, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 16, "stream": True}
    t0 = time.perf_counter()
    ttft = None
    with client.stream("POST", api + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if ttft is None and '"content"' in line and '"content":""' not in line:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100, help="requests per gateway")
    ap.add_argument("--ttft", type=float, default=0.02, help="the fake backend's time to first token (s)")
    ap.add_argument("--tpot", type=float, default=0.005, help="the fake backend's time per output token (s)")
    ap.add_argument("--price", type=float, default=1.0, help="the executors' price per 1k tokens (0: no pay blocks)")
    args = ap.parse_args()
    fake = (f"models:\n  - model_path: {MODEL}\n    backend: fake\n    dispatch_params: {{max_concurrency: 8}}\n"
            f"    price_per_1k: {args.price}\n"
            f"    fake: {{ttft_s: {args.ttft}, tpot_s: {args.tpot}, max_running: 8}}\n")
    tmp = Path(tempfile.mkdtemp(prefix="duel-bench-"))
    nodes = [
        ("plain", config(tmp, "plain", "  duel_rate: 0.0\n", "models: []\n")),
        ("dueling", config(tmp, "dueling", "  duel_rate: 1.0\n", "models: []\n")),
        ("exec1", config(tmp, "exec1", "", fake)),
        ("exec2", config(tmp, "exec2", "", fake)),
        ("exec3", config(tmp, "exec3", "", fake)),
        ("judge", config(tmp, "judge", "  judge: true\n  judge_method: fake\n", "models: []\n")),
    ]
    procs: list[subprocess.Popen[str]] = []
    apis: dict[str, str] = {}
    boot: list[str] = []
    try:
        for name, cfg in nodes:
            procs.append(spawn_join(["--config", str(cfg), "--data-dir", str(tmp / name), "--listen", "/ip4/127.0.0.1/tcp/0",
                                     "--api", "127.0.0.1:0", *boot], stderr=subprocess.DEVNULL))
            banner = read_banner(procs[-1])
            apis[name] = banner["api"][0]
            boot = boot or ["--bootstrap", banner["listening"][0]]
        with httpx.Client(timeout=60) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = client.get(apis["dueling"] + "/p2pserve/status").json()
                if sum(MODEL in p["models"] for p in st["peers"]) == 3 and any(p["judge"] and p["stake"] > 0 for p in st["peers"]):
                    break
                time.sleep(0.5)
            for i in range(20):  # warm up both paths
                one(client, apis["plain"], i)
                one(client, apis["dueling"], i)
            plain: list[tuple[float, float]] = []
            dueling: list[tuple[float, float]] = []
            for i in range(args.requests):
                plain.append(one(client, apis["plain"], 1000 + i))
                dueling.append(one(client, apis["dueling"], 1000 + i))
            time.sleep(5)
            duels = client.get(apis["dueling"] + "/p2pserve/status").json()["duels"]
        report(plain, dueling, duels, args)
    finally:
        stop_processes(procs)


def report(plain: list[tuple[float, float]], dueling: list[tuple[float, float]], duels: dict[str, int], args: argparse.Namespace) -> None:
    def p50(xs: list[float]) -> float:
        return statistics.median(xs) * 1000

    print(f"{args.requests} streamed requests per gateway, fake backend ttft {args.ttft * 1000:.0f} ms, tpot {args.tpot * 1000:.0f} ms")
    print(f"{'':28}{'duel_rate 0':>14}{'duel_rate 1.0':>16}{'ratio':>8}")
    for label, k in (("time to first token p50 (ms)", 0), ("total p50 (ms)", 1)):
        a, b = p50([x[k] for x in plain]), p50([x[k] for x in dueling])
        print(f"{label:28}{a:14.2f}{b:16.2f}{b / a:8.2f}")
    a90 = sorted(x[1] for x in plain)[int(0.9 * len(plain))] * 1000
    b90 = sorted(x[1] for x in dueling)[int(0.9 * len(dueling))] * 1000
    print(f"{'total p90 (ms)':28}{a90:14.2f}{b90:16.2f}{b90 / a90:8.2f}")
    print(f"duels at the dueling gateway: {duels}")


if __name__ == "__main__":
    main()
