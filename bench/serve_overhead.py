"""What a p2pserve hop costs a user, side by side with LiteLLM proxy, in one interleaved run.

Processes on 127.0.0.1, plus this client:
  * a fast fake OpenAI-compatible backend (``python -m p2pserve.backends.fake``, no delays);
  * node B (``p2pserve join``) serving that backend;
  * node A (``p2pserve join``), a gateway with no model: every request it gets is offloaded
    to B over libp2p (signed offer, accept, streamed chunks, signed receipt, paid on the
    ledger unless ``--price 0``);
  * LiteLLM proxy in front of the same backend, one worker, when an executable is given or
    found (``--litellm PATH``; default ``.venv-litellm/bin/litellm``; set it up with
    ``python3 -m venv .venv-litellm && .venv-litellm/bin/pip install 'litellm[proxy]'``:
    a separate environment, because LiteLLM pins versions of packages p2pserve also uses).
    Without it the benchmark says so and measures the other paths.

The paths, each a streamed chat completion of 16 tokens:
  direct   client -> backend
  local    client -> B's /v1 -> backend            (a node serving its own backend)
  gateway  client -> A's /v1 -> libp2p -> B -> backend
  litellm  client -> LiteLLM proxy -> backend

Each round measures every path the same way, in rotated order, so all see the same machine
state: first ``--requests`` sequential requests per path (interleaved one by one) for time
to first token and total time, then ``--seconds`` of ``--concurrency`` concurrent clients
per path for requests/second and the CPU time each process spent per request. The figures
are medians over ``--rounds`` rounds. "Added" is a path's p50 (or p90) minus the direct
path's in the same round. Time to first token is the first SSE event whose delta carries
text (the role chunk does not count).

CPU per request: the gateway path's node A (the gateway) and node B (the executor); the
fake backend's own CPU is shown apart and is not ours to count.

Before/after: ``--baseline DIR`` also runs a node pair from another source tree (say
``git worktree add /tmp/base <rev>``), as the paths ``local@base`` and ``gateway@base``, in
the same rounds against the same backend: both trees measured side by side in one run,
which a noisy machine needs (run one after the other, the same tree can differ by 20 %).

The floor: ``--floor`` adds the bare libp2p hop (``bench/hop_echo.py``: an offer and a
three-message answer over a reused stream between two processes, the product's transport and
framing, nothing else) as one more path in the same rounds, times Ed25519 signing and
verifying of a real offer and receipt, and prints what the gateway path cannot go below:
the local path's added time (the HTTP server, the serving path, the HTTP client to the
backend: all of which the gateway path also does) plus the hop plus four signatures.

Run: ``.venv/bin/python bench/serve_overhead.py [--rounds 3] [--price 0] [--spy DIR] [--json FILE]
[--baseline DIR] [--floor]``.
``--spy DIR`` records py-spy profiles of A and B during the gateway path's throughput phase
of the last round (summarise them with ``bench/profile_summary.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hop_echo import crypto_us, open_hop  # noqa: E402  (bench/, this file's directory)

from p2pserve.testing.processes import read_banner, spawn_join, stop_processes, wait_for  # noqa: E402

MODEL = "fake-model"
KEY = "sk-p2pserve-bench-0123456789abcdef"
"""The bearer key every proxy path checks (LiteLLM refuses to start without one; the nodes get
it as ``api_key`` so that both do the same work)."""
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 16,
        "stream": True}
PATHS = ("direct", "local", "gateway", "litellm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux /proc), children included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def strace_counts(out: str) -> dict[str, int]:
    """Calls per system call from ``strace -c`` output."""
    counts: dict[str, int] = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[-1].isidentifier() and cols[3].isdigit():
            counts[cols[-1]] = int(cols[3])
    return counts


async def syscalls_per_request(client: httpx.AsyncClient, t: Target, n: int) -> dict[str, dict[str, float]]:
    """System calls per request of each of ``t``'s processes over ``n`` sequential requests
    (``strace -c -f`` attached meanwhile: slow, so kept out of every timed phase)."""
    import signal as _signal

    tracers = {name: subprocess.Popen(["strace", "-c", "-f", "-p", str(pid)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True) for name, pid in t.pids.items()}
    await trio.sleep(1.0)  # attached
    for _ in range(n):
        await hit(client, t)
    out: dict[str, dict[str, float]] = {}
    for name, p in tracers.items():
        p.send_signal(_signal.SIGINT)
        _, err = p.communicate(timeout=30)
        counts = strace_counts(err)
        out[name] = {k: counts.get(k, 0) / n for k in ("sendto", "recvfrom", "epoll_wait", "write", "read")}
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def first_text(line: str) -> bool:
    """Whether an SSE line is an event whose delta (or completion text) carries text."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    try:
        choices = json.loads(line[6:]).get("choices") or []
    except ValueError:
        return False
    for c in choices:
        if (c.get("delta") or {}).get("content") or c.get("text"):
            return True
    return False


async def one(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(time to first token, total) of one streamed request, in seconds."""
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", url, json=BODY, headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and first_text(line):
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    if ttft is None:
        raise RuntimeError(f"{url}: a streamed answer with no text")
    return ttft, total


@dataclass
class Target:
    name: str
    url: str
    pids: dict[str, int]
    """The processes whose CPU counts for this path (name -> pid)."""
    headers: dict[str, str] = field(default_factory=dict)
    call: Callable[[], Awaitable[float]] | None = None
    """A path that is not an HTTP request (``--floor``'s bare hop): one exchange, its seconds."""


async def hit(client: httpx.AsyncClient, t: Target) -> tuple[float, float]:
    """(time to first token, total) of one request on path ``t``."""
    if t.call is not None:
        took = await t.call()
        return took, took
    return await one(client, t.url, t.headers)


@dataclass
class Round:
    ttft: dict[str, list[float]] = field(default_factory=dict)
    total: dict[str, list[float]] = field(default_factory=dict)
    rps: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, dict[str, float]] = field(default_factory=dict)


async def throughput(client: httpx.AsyncClient, t: Target, concurrency: int, seconds: float,
                     spy: list[tuple[str, int]]) -> tuple[float, dict[str, float]]:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await hit(client, t)
            done += 1

    spies = [subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "-f", "raw",
                               "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for out, pid in spy]
    cpu0 = {name: cpu_seconds(pid) for name, pid in t.pids.items()}
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    rps = done / (time.perf_counter() - t0)
    cpu = {name: (cpu_seconds(pid) - cpu0[name]) * 1000 / max(done, 1) for name, pid in t.pids.items()}
    for p in spies:
        p.wait(timeout=60)
    return rps, cpu


async def measure(targets: list[Target], opts: argparse.Namespace, spy_pids: dict[str, int]) -> list[Round]:
    limits = httpx.Limits(max_connections=opts.concurrency + 8, max_keepalive_connections=opts.concurrency + 8)
    rounds: list[Round] = []
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        for t in targets:  # warm up every path (connections, libp2p session streams)
            for _ in range(20):
                await hit(client, t)
        for i in range(opts.rounds):
            r = Round()
            order = targets[i % len(targets):] + targets[:i % len(targets)]
            for t in order:
                r.ttft[t.name], r.total[t.name] = [], []
            for _ in range(opts.requests):
                for t in order:
                    await trio.sleep(opts.pause)
                    a, b = await hit(client, t)
                    r.ttft[t.name].append(a)
                    r.total[t.name].append(b)
            for t in order:
                last = i == opts.rounds - 1
                spy = [(f"{opts.spy}/{name}.txt", pid) for name, pid in spy_pids.items()] \
                    if opts.spy and last and t.name == opts.spy_path else []
                r.rps[t.name], r.cpu_ms[t.name] = await throughput(client, t, opts.concurrency, opts.seconds, spy)
            rounds.append(r)
        if opts.syscalls:
            print("\nsystem calls per request (strace -c, sequential requests):")
            for t in targets:
                calls = await syscalls_per_request(client, t, opts.syscalls)
                print(f"  {t.name:10}" + "; ".join(
                    f"{proc} " + " ".join(f"{k} {v:.1f}" for k, v in c.items() if v) for proc, c in calls.items()))
            print(f"round {i + 1}/{opts.rounds}: " + ", ".join(
                f"{t.name} {statistics.median(r.total[t.name]) * 1000:.2f} ms {r.rps[t.name]:.0f}/s" for t in targets),
                flush=True)
    return rounds


async def measure_all(targets: list[Target], opts: argparse.Namespace, spy_pids: dict[str, int],
                      hop: tuple[str, int] | None) -> list[Round]:
    """``measure``, with the bare hop as one more path when ``hop`` (its server's address, pid)."""
    if hop is None:
        return await measure(targets, opts, spy_pids)
    async with open_hop(hop[0], opts.concurrency + 8) as exchange:
        path = Target("hop", "", {"hop_client": os.getpid(), "hop_server": hop[1]}, call=exchange)
        return await measure([*targets, path], opts, spy_pids)


def summarise(rounds: list[Round], names: list[str]) -> dict[str, Any]:
    """Medians over rounds of each path's figures (ms; added = path minus direct, per round)."""
    return {n: _path_summary(rounds, n) for n in names}


def _path_summary(rounds: list[Round], n: str) -> dict[str, Any]:
    def med(f: Any) -> float:
        return statistics.median(f(r) for r in rounds)

    def added(series: str, q: float) -> float:
        def one(r: Round) -> float:
            xs, base = getattr(r, series)[n], getattr(r, series)["direct"]
            return (pct(xs, q) - pct(base, q)) * 1000
        return med(one)

    return {
        "ttft_p50_ms": med(lambda r: statistics.median(r.ttft[n]) * 1000),
        "total_p50_ms": med(lambda r: statistics.median(r.total[n]) * 1000),
        "added_ttft_p50_ms": added("ttft", 0.5),
        "added_ttft_p90_ms": added("ttft", 0.9),
        "added_total_p50_ms": added("total", 0.5),
        "added_total_p90_ms": added("total", 0.9),
        "rps": med(lambda r: r.rps[n]),
        "cpu_ms": {p: med(lambda r, p=p: r.cpu_ms[n][p]) for p in rounds[0].cpu_ms[n]},
    }


def report(s: dict[str, Any], opts: argparse.Namespace) -> None:
    names = [n for n in s if n != "hop"]
    print(f"\nmedians of {opts.rounds} rounds; {opts.requests} sequential requests per path per round; "
          f"{opts.concurrency} concurrent clients for {opts.seconds:g} s per path per round; price {opts.price:g}")
    print(f"{'path':13}{'total p50':>11}{'added p50':>11}{'added p90':>11}{'TTFT p50':>10}{'added':>8}"
          f"{'req/s':>8}  CPU ms per request")
    for n in names:
        f = s[n]
        cpu = ", ".join(f"{p} {v:.2f}" for p, v in f["cpu_ms"].items())
        print(f"{n:13}{f['total_p50_ms']:>11.2f}{f['added_total_p50_ms']:>11.2f}{f['added_total_p90_ms']:>11.2f}"
              f"{f['ttft_p50_ms']:>10.2f}{f['added_ttft_p50_ms']:>8.2f}{f['rps']:>8.0f}  {cpu}")
    g = s["gateway"]
    print(f"\ngateway hop: added p50 {g['added_total_p50_ms']:.2f} ms, gateway CPU {g['cpu_ms']['node_a']:.2f} ms, "
          f"executor CPU {g['cpu_ms']['node_b']:.2f} ms per request (backend's own {g['cpu_ms']['backend']:.2f} ms)")
    if "litellm" in s:
        lt = s["litellm"]
        for n in ("local", "gateway"):
            print(f"LiteLLM / {n}: added p50 {lt['added_total_p50_ms'] / max(s[n]['added_total_p50_ms'], 1e-9):.1f}x, "
                  f"req/s {s[n]['rps'] / lt['rps']:.1f}x, proxy CPU "
                  f"{lt['cpu_ms']['litellm'] / (s[n]['cpu_ms']['node_a' if n == 'gateway' else 'node_b']):.1f}x")
    for n in names[1:]:
        print(f"{n} / direct: total p50 {s[n]['total_p50_ms'] / s['direct']['total_p50_ms']:.2f}x, "
              f"req/s {s[n]['rps'] / s['direct']['rps']:.2f}x")
    for n in ("local", "gateway"):
        if f"{n}@base" not in s:
            continue
        new, old = s[n], s[f"{n}@base"]
        cpu = ", ".join(f"{p} {old['cpu_ms'][p]:.2f} -> {v:.2f} ({v / old['cpu_ms'][p]:.2f}x)"
                        for p, v in new["cpu_ms"].items() if p != "backend")
        print(f"{n} against its baseline: added p50 {old['added_total_p50_ms']:.2f} -> {new['added_total_p50_ms']:.2f} ms, "
              f"req/s {old['rps']:.0f} -> {new['rps']:.0f}, CPU ms per request {cpu}")
    if "hop" in s:
        report_floor(s, opts.crypto)


def report_floor(s: dict[str, Any], crypto: dict[str, float]) -> None:
    """What the gateway path cannot go below: the local path's work plus the bare hop plus the
    offer's and receipt's signatures (``--floor``), against the issue's targets."""
    hop, local, direct, gw = s["hop"], s["local"], s["direct"], s["gateway"]
    sigs = sum(crypto.values()) / 1000
    floor = local["added_total_p50_ms"] + hop["total_p50_ms"] + sigs
    backend = gw["cpu_ms"]["backend"]
    print("\nthe floor (--floor): a bare libp2p hop, offer -> Accept + Chunk + Done in one write, on one reused "
          "stream per client, between two processes; Ed25519 (pynacl) per signature: "
          + ", ".join(f"{k} {v:.0f} us" for k, v in crypto.items()))
    print(f"  bare hop: p50 {hop['total_p50_ms']:.2f} ms sequential, {hop['rps']:.0f} exchanges/s at the same concurrency, "
          f"CPU ms per exchange: client {hop['cpu_ms']['hop_client']:.2f}, server {hop['cpu_ms']['hop_server']:.2f} "
          f"({hop['cpu_ms']['hop_client'] / backend:.2f}x and {hop['cpu_ms']['hop_server'] / backend:.2f}x the backend's own)")
    print(f"  gateway added p50 >= local path's added {local['added_total_p50_ms']:.2f} + bare hop "
          f"{hop['total_p50_ms']:.2f} + four signatures {sigs:.2f} = {floor:.2f} ms "
          f"({floor / direct['total_p50_ms']:.2f}x direct); measured {gw['added_total_p50_ms']:.2f} ms; "
          f"issue 13's target 0.9x direct = {0.9 * direct['total_p50_ms']:.2f} ms")
    client = hop["cpu_ms"]["hop_client"] + (crypto["sign offer"] + crypto["verify receipt"]) / 1000
    print(f"  gateway CPU >= bare hop's client end + sign offer + verify receipt = {client:.2f} ms "
          f"({client / backend:.2f}x the backend's own, before any HTTP); measured {gw['cpu_ms']['node_a']:.2f} ms; "
          f"target 1.0x = {backend:.2f} ms")


def start_pair(tmp: Path, suffix: str, tree: Path | None,
               procs: list[subprocess.Popen[Any]]) -> tuple[str, int, str, int]:
    """Nodes B (serving the backend) and A (a gateway to B) from ``tree`` (default: this one);
    (B's API, B's pid, A's API, A's pid) once A can route and pay."""
    def join(args: list[str]) -> subprocess.Popen[str]:
        if tree is None:
            return spawn_join(args, stderr=subprocess.DEVNULL)
        # ``python -m p2pserve`` imports from its working directory: run it from the tree
        return subprocess.Popen([sys.executable, "-m", "p2pserve", "join", *args], cwd=tree, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(tree)})

    common = ["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]
    procs.append(join(["--config", str(tmp / "b.yaml"), "--data-dir", str(tmp / f"b{suffix}"), *common]))
    b = read_banner(procs[-1])
    procs.append(join(["--config", str(tmp / "a.yaml"), "--data-dir", str(tmp / f"a{suffix}"), *common,
                       "--bootstrap", b["listening"][0]]))
    a = read_banner(procs[-1])
    gateway = a["api"][0]
    # A routes once it knows B serves the model and its own ledger account is open
    # (a node opens its account once a peer confirmed its chain; until then it can pay nothing).
    wait_for(lambda: MODEL in {m["id"] for m in httpx.get(f"{gateway}/v1/models", headers=AUTH).json()["data"]},
             30, f"the gateway{suffix} knows B's model")
    wait_for(lambda: httpx.get(f"{gateway}/p2pserve/status", headers=AUTH).json()["ledger"]["opened"], 30,
             f"the gateway{suffix}'s ledger account open")
    return b["api"][0], procs[-2].pid, gateway, procs[-1].pid


def start_litellm(exe: str, backend: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (tmp / "litellm.yaml").write_text(json.dumps({
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{backend}/v1",
                                                                "api_key": "none"}}],
        "litellm_settings": {"drop_params": True, "telemetry": False},
    }))
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True",
           "LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no fetch from the internet
    proc = subprocess.Popen([exe, "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200, 300, "LiteLLM proxy up (it takes ~30-60 s to start)",
             ignore=(httpx.HTTPError,))
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100, help="sequential requests per path per round")
    ap.add_argument("--pause", type=float, default=0.0, metavar="S",
                    help="idle seconds before each sequential request (the first request after a pause)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput phase per path per round")
    ap.add_argument("--price", type=float, default=1.0,
                    help="B's price in credits per 1k tokens; 0: no ledger block per request (the serving path alone)")
    ap.add_argument("--litellm", default=str(ROOT / ".venv-litellm/bin/litellm"),
                    help="LiteLLM proxy executable ('' to leave it out)")
    ap.add_argument("--spy", metavar="DIR", help="py-spy (on PATH) records A and B during the last gateway phase")
    ap.add_argument("--spy-path", default="gateway", help="the path whose throughput phase --spy records")
    ap.add_argument("--json", metavar="FILE", help="write the per-path medians here")
    ap.add_argument("--syscalls", type=int, default=0, metavar="N",
                    help="also count system calls per request over N requests per path (needs strace)")
    ap.add_argument("--floor", action="store_true",
                    help="also measure the bare libp2p hop (bench/hop_echo.py) and signatures: the gateway path's floor")
    ap.add_argument("--baseline", metavar="DIR",
                    help="another source tree (e.g. a git worktree of an older revision) whose nodes are measured too")
    opts = ap.parse_args()
    if opts.spy:
        Path(opts.spy).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="p2pserve-serve-bench-"))
    procs: list[subprocess.Popen[Any]] = []
    try:
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "p2pserve.backends.fake", "--port", str(port), "--model",
                                       MODEL, "--dialect", "vllm", "--ttft", "0", "--tpot", "0", "--max-running", "256"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        backend = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{backend}/v1/models", timeout=1).status_code == 200, 30, "fake backend up",
                 ignore=(httpx.HTTPError,))
        (tmp / "b.yaml").write_text(json.dumps({
            "server_params": {"accept_frequency": 1.0, "api_key": KEY},
            "models": [{"model_path": MODEL, "base_url": backend, "price_per_1k": opts.price,
                        "dispatch_params": {"max_concurrency": 256, "target_token_usage": 1.0}}],
        }))
        (tmp / "a.yaml").write_text(json.dumps({"server_params": {"offload_frequency": 1.0, "policy": "always-offload",
                                                                  "api_key": KEY},
                                                "models": []}))
        pids = {"backend": procs[0].pid}
        targets = [Target("direct", f"{backend}/v1/chat/completions", {"backend": pids["backend"]})]
        trees = [("", None)] + ([("@base", Path(opts.baseline).resolve())] if opts.baseline else [])
        for suffix, tree in trees:
            b_api, b_pid, a_api, a_pid = start_pair(tmp, suffix, tree, procs)
            targets += [
                Target(f"local{suffix}", f"{b_api}/v1/chat/completions", {"node_b": b_pid, "backend": pids["backend"]},
                       AUTH),
                Target(f"gateway{suffix}", f"{a_api}/v1/chat/completions",
                       {"backend": pids["backend"], "node_b": b_pid, "node_a": a_pid}, AUTH),
            ]
            if not suffix:
                pids.update(node_b=b_pid, node_a=a_pid)
        if opts.litellm and shutil.which(opts.litellm):
            lproc, lurl = start_litellm(opts.litellm, backend, tmp)
            procs.append(lproc)
            targets.append(Target("litellm", f"{lurl}/v1/chat/completions",
                                  {"litellm": lproc.pid, "backend": pids["backend"]}, AUTH))
        else:
            print(f"LiteLLM proxy not measured: no executable at {opts.litellm!r} (see this file's docstring)")
        hop = None
        if opts.floor:
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "hop_echo.py")], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True))
            assert procs[-1].stdout is not None
            hop = (procs[-1].stdout.readline().strip(), procs[-1].pid)
            opts.crypto = crypto_us()
        rounds = trio.run(measure_all, targets, opts, {"node_a": pids["node_a"], "node_b": pids["node_b"]}, hop)
        s = summarise(rounds, [t.name for t in targets] + (["hop"] if hop else []))
        report(s, opts)
        if opts.json:
            Path(opts.json).write_text(json.dumps({"options": vars(opts), "paths": s}, indent=1))
    finally:
        stop_processes(procs, timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
