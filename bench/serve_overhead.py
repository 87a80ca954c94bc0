"""Added latency of an offloaded request, and requests/second one node routes.

Three processes on 127.0.0.1, plus this client:
  * a fast fake OpenAI-compatible backend (``python -m p2pserve.backends.fake``, no delays);
  * node B (``p2pserve join``) serving that backend;
  * node A (``p2pserve join``), a gateway with no model: every request it gets is offloaded
    to B over libp2p (signed offer, accept, streamed chunks, signed receipt).

Measured side by side in one run, streaming chat completions of the same prompt:
  * direct: client -> backend;
  * via p2pserve: client -> A's /v1 -> libp2p -> B -> backend;
time to first token and total, p50/p90; then the routed requests/second through A with
concurrent clients, and the CPU milliseconds each process spent per routed request.
``--price 0`` makes B free, so no ledger block is written per request (the serving path
alone); ``--spy DIR`` records py-spy profiles of A and B during the req/s phase.
Run: ``.venv/bin/python bench/serve_overhead.py [--requests N] [--price 0]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.testing.processes import read_banner, spawn_join, stop_processes  # noqa: E402

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 16, "stream": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", url, json=BODY) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and '"content"' in line and '"content":""' not in line:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def measure(direct: str, via: str, n: int, concurrency: int, seconds: float,
                  spy: list[tuple[str, int]] | None = None, pids: dict[str, int] | None = None) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        for _ in range(20):  # warm up both paths (connections, libp2p stream setup)
            await one(client, direct)
            await one(client, via)
        d_ttft, d_total, v_ttft, v_total = [], [], [], []
        for _ in range(n):  # interleaved, so both paths see the same machine state
            a, b = await one(client, direct)
            d_ttft.append(a)
            d_total.append(b)
            a, b = await one(client, via)
            v_ttft.append(a)
            v_total.append(b)
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one(client, via)
                done += 1

        spies = [subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200",
                                   "-f", "raw", "-o", out],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for out, pid in spy or []]
        cpu0 = {name: cpu_seconds(pid) for name, pid in (pids or {}).items()}
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        rps = done / (time.perf_counter() - t0)
        cpu = {f"cpu_ms_per_req_{name}": (cpu_seconds(pid) - cpu0[name]) * 1000 / max(done, 1)
               for name, pid in (pids or {}).items()}
        for p in spies:
            p.wait(timeout=60)
    ms = 1000.0
    return {
        "direct_ttft_p50_ms": statistics.median(d_ttft) * ms,
        "via_ttft_p50_ms": statistics.median(v_ttft) * ms,
        "added_ttft_p50_ms": (statistics.median(v_ttft) - statistics.median(d_ttft)) * ms,
        "direct_total_p50_ms": statistics.median(d_total) * ms,
        "via_total_p50_ms": statistics.median(v_total) * ms,
        "added_total_p50_ms": (statistics.median(v_total) - statistics.median(d_total)) * ms,
        "added_total_p90_ms": (pct(v_total, 0.9) - pct(d_total, 0.9)) * ms,
        "routed_rps": rps,
        **cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--price", type=float, default=1.0,
                    help="B's price in credits per 1k tokens; 0 means no ledger block per request (serving path alone)")
    ap.add_argument("--spy", metavar="DIR", help="py-spy (on PATH) records nodes A and B during the req/s phase into DIR")
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="p2pserve-serve-bench-"))
    port = free_port()
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "p2pserve.backends.fake", "--port", str(port), "--model", MODEL,
                                       "--dialect", "vllm", "--ttft", "0", "--tpot", "0", "--max-running", "256"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
        backend = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{backend}/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        (tmp / "b.yaml").write_text(json.dumps({
            "server_params": {"accept_frequency": 1.0},
            "models": [{"model_path": MODEL, "base_url": backend, "price_per_1k": opts.price,
                        "dispatch_params": {"max_concurrency": 256, "target_token_usage": 1.0}}],
        }))
        (tmp / "a.yaml").write_text(json.dumps({"server_params": {"offload_frequency": 1.0, "policy": "always-offload"}, "models": []}))
        common = ["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]
        procs.append(spawn_join(["--config", str(tmp / "b.yaml"), "--data-dir", str(tmp / "b"), *common], stderr=subprocess.DEVNULL))
        b = read_banner(procs[-1])
        procs.append(spawn_join(["--config", str(tmp / "a.yaml"), "--data-dir", str(tmp / "a"), *common,
                                 "--bootstrap", b["listening"][0]], stderr=subprocess.DEVNULL))
        a = read_banner(procs[-1])
        api = a["api"][0]
        for _ in range(200):  # until A knows B serves the model
            if MODEL in {m["id"] for m in httpx.get(f"{api}/v1/models").json()["data"]}:
                break
            time.sleep(0.1)
        spy = [(f"{opts.spy}/node_a.txt", procs[2].pid), (f"{opts.spy}/node_b.txt", procs[1].pid)] if opts.spy else None
        r = trio.run(measure, f"{backend}/v1/chat/completions", f"{api}/v1/chat/completions",
                     opts.requests, opts.concurrency, opts.seconds, spy,
                     {"backend": procs[0].pid, "node_b": procs[1].pid, "node_a": procs[2].pid})
        print(f"{'':24}{'direct':>10}{'via p2pserve':>14}{'added':>10}{'ratio':>8}")
        print(f"{'TTFT p50 (ms)':24}{r['direct_ttft_p50_ms']:>10.2f}{r['via_ttft_p50_ms']:>14.2f}"
              f"{r['added_ttft_p50_ms']:>10.2f}{r['via_ttft_p50_ms'] / r['direct_ttft_p50_ms']:>8.2f}")
        print(f"{'total p50 (ms)':24}{r['direct_total_p50_ms']:>10.2f}{r['via_total_p50_ms']:>14.2f}"
              f"{r['added_total_p50_ms']:>10.2f}{r['via_total_p50_ms'] / r['direct_total_p50_ms']:>8.2f}")
        print(f"{'added total p90 (ms)':24}{r['added_total_p90_ms']:>34.2f}")
        print(f"routed requests/s through one gateway node ({opts.concurrency} concurrent clients): {r['routed_rps']:.0f}")
        print("CPU ms per routed request: " + ", ".join(
            f"{k.removeprefix('cpu_ms_per_req_')} {v:.2f}" for k, v in r.items() if k.startswith("cpu_ms_per_req_")))
    finally:
        stop_processes(procs, timeout=15)


if __name__ == "__main__":
    main()
