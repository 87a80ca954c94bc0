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

Then the traffic table (``--no-traffic`` leaves it out): per node per virtual second, what
each node receives on the status topic and the ledger blocks topic (pubsub copies and
payload bytes) and on streams (by protocol: ledger sync pulls), process CPU ms / N, and the
same CPU plus a decode+verify per status and block received (what the process-wide memos
spare the simulated nodes; the cost is timed after the run, no memo, best of 5). Windows:
``overall`` = node 0's start to ``--overall`` (60) virtual s after the last start (all nodes
start at virtual time 0, so this is the join burst), ``steady`` = ``--settle`` (60) to
``--seconds``, and with ``--join`` ``join`` = the 10 s after one more node joins at the end.
At 500 nodes the status interval is 100 s, so a steady window needs several hundred
seconds. Also: mean status and block size, memo checks/hits, decode and verify µs.

Traffic is counted in this process only, by wrapping the memory transport (0.5 µs per
copy): a pubsub copy when it is queued for a peer (``MemoryTransport._enqueue``; the
transport sends each message to each subscribed node once), stream bytes when a data chunk
is pushed into a stream direction (``_Pipe.push``, tagged with the protocol of the
``open_stream`` that made it). Bytes are payloads: no pubsub envelope, muxer or encryption
overhead. The product code is unchanged. ``--plot-traffic PNG`` draws messages, KiB and
CPU ms per node per virtual second vs N; ``--series`` files are taken as repeats of one
configuration (CPU drawn as median and min-max). What ``docs/scaling.md`` ran:

    .venv/bin/python bench/membership_scale.py --nodes 50 100 200 500 --seconds 360 --join --json /tmp/run1.json
    (again into /tmp/run2.json)
    .venv/bin/python bench/membership_scale.py --nodes --series 1=/tmp/run1.json --series 2=/tmp/run2.json \
        --plot-traffic docs/img/scaling_membership.png

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
import weakref
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.config import parse_config  # noqa: E402
from p2pserve.sim.cluster import open_cluster  # noqa: E402
from transports.memory import MemoryNetwork, MemoryStream, MemoryTransport  # noqa: E402
from transports.memory._streams import _Pipe  # noqa: E402


class Traffic:
    """What the nodes of this process receive, counted by wrapping the memory transport
    (:meth:`install`): pubsub copies and payload bytes per topic, stream data bytes per
    protocol, per virtual second of arrival (network-wide sums; divide by N for per node)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str], list[int]] = {}  # (second, topic or stream protocol) -> [copies, bytes]
        self.node_bytes: defaultdict[str, int] = defaultdict(int)  # every byte each node received
        self.samples: dict[str, bytes] = {}  # a status and a block, to time their checks afterwards
        self._protocol: weakref.WeakKeyDictionary[_Pipe, str] = weakref.WeakKeyDictionary()

    @staticmethod
    def kind(key: str) -> str:
        """``status``, ``blocks``, ``stream_<protocol>`` or ``other``."""
        if key.startswith("stream:"):
            return "stream_" + key[7:].strip("/").replace("/", "_")
        return "status" if key.endswith("/status/1") else "blocks" if key.endswith("/blocks/1") else "other"

    def snapshot(self) -> dict[str, int]:
        """Cumulative ``msgs_<kind>`` and ``bytes_<kind>`` so far."""
        out: defaultdict[str, int] = defaultdict(int)
        for (_, key), (copies, size) in self.counts.items():
            kind = self.kind(key)
            out[f"msgs_{kind}"] += copies
            out[f"bytes_{kind}"] += size
        return dict(out)

    def per_second(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (second, key), (copies, size) in sorted(self.counts.items()):
            kind = self.kind(key)
            row = out.setdefault(str(second), {})
            row[f"msgs_{kind}"] = row.get(f"msgs_{kind}", 0) + copies
            row[f"bytes_{kind}"] = row.get(f"bytes_{kind}", 0) + size
        return out

    def install(self) -> None:
        """Wrap the memory transport's pubsub enqueue, stream push and stream open (this process only)."""
        counts, node_bytes, samples, protocols = self.counts, self.node_bytes, self.samples, self._protocol
        enqueue, push, open_stream = MemoryTransport._enqueue, _Pipe.push, MemoryTransport.open_stream

        def counted_enqueue(t: MemoryTransport, at: float, mid: tuple[str, int], msg: Any, src: str) -> None:
            size = len(msg.data)
            key = (int(at), msg.topic)
            c = counts.get(key)
            if c is None:
                counts[key] = c = [0, 0]
                samples.setdefault(self.kind(msg.topic), msg.data)
            c[0] += 1
            c[1] += size
            node_bytes[t.peer_id] += size
            enqueue(t, at, mid, msg, src)

        def counted_push(pipe: _Pipe, network: MemoryNetwork, kind: int, data: bytes = b"") -> None:
            if data:
                key = (int(trio.current_time()), "stream:" + protocols.get(pipe, "?"))
                c = counts.setdefault(key, [0, 0])
                c[0] += 1
                c[1] += len(data)
                node_bytes[pipe.dst] += len(data)
            push(pipe, network, kind, data)

        async def tagged_open_stream(t: MemoryTransport, peer_id: str, protocol: str) -> Any:
            stream = await open_stream(t, peer_id, protocol)
            assert isinstance(stream, MemoryStream)
            protocols[stream._in] = protocol
            protocols[stream._out] = protocol
            return stream

        MemoryTransport._enqueue = counted_enqueue  # type: ignore[method-assign,assignment]
        _Pipe.push = counted_push  # type: ignore[method-assign,assignment]
        MemoryTransport.open_stream = tagged_open_stream  # type: ignore[method-assign,assignment]


def _verify_cost_us(data: bytes, what: str, repeat: int = 1000) -> dict[str, float]:
    """µs to decode one status or block, and to decode it and check its Ed25519 signature,
    as a node that has not seen it does: no memo (``verify`` on the message would remember
    the signature, and ``decode_gossip`` the block)."""
    from p2pserve.crypto import public_key_from_peer_id, verify
    from p2pserve.ledger.blocks import decode_block
    from p2pserve.wire.codec import SignedMessage, decode
    from p2pserve.wire.gossip import Status

    def decoded() -> SignedMessage:
        return decode(data, Status) if what == "status" else decode_block(data)

    def decode_only() -> None:
        decoded()

    def decode_verify() -> None:
        m = decoded()
        verify(public_key_from_peer_id(m.signer), m.signing_bytes(), m.signature)  # type: ignore[attr-defined]

    def best_us(fn: Callable[[], None]) -> float:  # best of 5: the cores are shared
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            best = min(best, time.perf_counter() - t0)
        return 1e6 * best / repeat

    return {f"{what}_decode_us": best_us(decode_only), f"{what}_decode_verify_us": best_us(decode_verify)}


def _snapshot(nodes: list[Any], traffic: Traffic | None) -> dict[str, Any]:
    """Cumulative counters now: virtual time, process CPU, statuses, traffic."""
    snap: dict[str, Any] = {
        "t": trio.current_time(),
        "cpu_s": time.process_time(),
        "published": sum(node.gossip.published for node in nodes),
        "delivered": sum(node.gossip.received for node in nodes),
    }
    if traffic is not None:
        snap["traffic"] = traffic.snapshot()
    return snap


JOIN_WINDOW = 10.0
"""Virtual seconds counted after the ``--join`` node starts."""


async def _gossip_only(
    n: int,
    seconds: float,
    seed: int,
    traffic: Traffic | None = None,
    overall: float = 60.0,
    settle: float = 60.0,
    join: bool = False,
) -> dict[str, Any]:
    gateway = parse_config({"models": []})
    wall0 = time.perf_counter()
    start = _snapshot([], traffic)
    async with open_cluster([gateway] * n, network=MemoryNetwork(seed=seed, default_latency=0.02), seed=seed) as cluster:
        wall_started, virtual_started = time.perf_counter(), trio.current_time()
        nodes = cluster.nodes
        marks = {"started": _snapshot(nodes, traffic)}
        t0 = trio.current_time()
        for name, at in sorted({"overall_end": min(overall, seconds), "settled": min(settle, seconds), "end": seconds}.items(),
                               key=lambda kv: kv[1]):
            await trio.sleep_until(t0 + at)
            marks[name] = _snapshot(nodes, traffic)
        known = [len(node.peers) for node in nodes]
        out = {
            "nodes": n,
            "seconds": seconds,
            "startup_virtual_s": virtual_started,
            "startup_wall_s": wall_started - wall0,
            "gossip_wall_s": time.perf_counter() - wall_started,
            "published": marks["end"]["published"],
            "delivered": marks["end"]["delivered"],
            "rejected": sum(node.gossip.rejected for node in nodes),
            "know_all": sum(k == n - 1 for k in known),
            "pairs_known": sum(known) / max(1, n * (n - 1)),
            "interval_s": nodes[0].gossip.current_interval(),
            "marks": {"start": start, **marks},
        }
        if join:  # one more node joins at the end; its first JOIN_WINDOW seconds are the "join" window
            out["marks"]["join"] = _snapshot(nodes[:n], traffic)
            await cluster.add(gateway)
            await trio.sleep(JOIN_WINDOW)
            out["marks"]["join_end"] = _snapshot(nodes[:n], traffic)
        if traffic is not None:
            out["traffic_per_second"] = traffic.per_second()
            per_node = sorted(traffic.node_bytes.get(node.transport.peer_id, 0) for node in nodes[:n])
            out["node_bytes_min_median_max"] = [per_node[0], per_node[len(per_node) // 2], per_node[-1]]
        cluster.stop()
    out["total_wall_s"] = time.perf_counter() - wall0
    return out


async def _idle_service(self: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


def run_one(
    n: int,
    seconds: float,
    seed: int,
    profile: str | None,
    without_ledger: bool = False,
    count_traffic: bool = True,
    overall: float = 60.0,
    settle: float = 60.0,
    join: bool = False,
) -> dict[str, Any]:
    """One run in this process; returns the measurements (peak RSS of this process)."""
    if without_ledger:
        from p2pserve.ledger.service import LedgerService

        LedgerService.run = _idle_service  # type: ignore[method-assign]
    traffic = Traffic() if count_traffic else None
    if traffic is not None:
        traffic.install()
    clock = trio.testing.MockClock(autojump_threshold=0)
    if profile:
        import cProfile

        prof = cProfile.Profile()
        out: dict[str, Any] = prof.runcall(trio.run, _gossip_only, n, seconds, seed, traffic, overall, settle, join, clock=clock)
        prof.dump_stats(profile)
    else:
        out = trio.run(_gossip_only, n, seconds, seed, traffic, overall, settle, join, clock=clock)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    out["cpu_s"] = usage.ru_utime + usage.ru_stime  # steadier than wall time on shared cores
    out["without_ledger"] = without_ledger
    if traffic is not None:
        from p2pserve.membership.verified import SHARED

        out["status_memo"] = {"checked": SHARED.checked, "hits": SHARED.hits}
        for what, data in traffic.samples.items():
            if what not in ("status", "blocks"):
                continue
            out.update(_verify_cost_us(data, what))
    return out


def run_fresh(
    n: int,
    seconds: float,
    seed: int,
    profile: str | None,
    without_ledger: bool,
    count_traffic: bool = True,
    overall: float = 60.0,
    settle: float = 60.0,
    join: bool = False,
) -> dict[str, Any]:
    """One run in a fresh interpreter, so peak RSS is per run."""
    cmd = [sys.executable, __file__, "--one", str(n), "--seconds", str(seconds), "--seed", str(seed),
           "--overall", str(overall), "--settle", str(settle)]
    if profile:
        cmd += ["--profile", profile]
    if without_ledger:
        cmd += ["--without-ledger"]
    if not count_traffic:
        cmd += ["--no-traffic"]
    if join:
        cmd += ["--join"]
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


WINDOWS = {"overall": ("start", "overall_end"), "steady": ("settled", "end"), "join": ("join", "join_end")}
"""Rate windows, between two marks: overall = node 0's start to ``--overall`` virtual
seconds after the last start (join burst included); steady = ``--settle`` to the end;
join (with ``--join``) = the ``JOIN_WINDOW`` seconds after one more node joins, counted
on the first N nodes."""


def window(r: dict[str, Any], name: str) -> tuple[float, float]:
    a, b = WINDOWS[name]
    return r["marks"][a]["t"], r["marks"][b]["t"]


def check_costs(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The lowest over ``rows`` of each measured decode+verify cost (µs): one figure for all
    N, the least disturbed, since load on the shared cores only ever adds to a measurement."""
    out = {}
    for key in ("status_decode_verify_us", "blocks_decode_verify_us"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = min(values)
    return out


def rates(r: dict[str, Any], costs: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Per node per virtual second, in each window that has traffic and a positive length.
    ``costs`` (µs, from :func:`check_costs`) default to this run's own measurements."""
    n = r["nodes"]
    costs = costs if costs is not None else r
    out = {}
    for name, (a, b) in WINDOWS.items():
        if a not in r["marks"]:
            continue
        m0, m1 = r["marks"][a], r["marks"][b]
        secs = m1["t"] - m0["t"]
        if secs <= 0 or "traffic" not in m1:
            continue
        t = {k: v - m0.get("traffic", {}).get(k, 0) for k, v in m1["traffic"].items()}
        scale = 1 / n / secs
        out[name] = {
            "seconds": secs,
            "status_msgs": t.get("msgs_status", 0) * scale,
            "status_bytes": t.get("bytes_status", 0) * scale,
            "blocks_msgs": t.get("msgs_blocks", 0) * scale,
            "blocks_bytes": t.get("bytes_blocks", 0) * scale,
            "stream_bytes": sum(v for k, v in t.items() if k.startswith("bytes_stream_")) * scale,
            "total_bytes": sum(v for k, v in t.items() if k.startswith("bytes_")) * scale,
            "cpu_ms": 1000 * (m1["cpu_s"] - m0["cpu_s"]) * scale,
            # what one node per process would add: the memos verify each status and block once
            # per process here, a real node decodes and checks every one it receives
            "cpu_ms_real_est": 1000 * (m1["cpu_s"] - m0["cpu_s"]) * scale
            + t.get("msgs_status", 0) * scale * costs.get("status_decode_verify_us", 0.0) / 1000
            + t.get("msgs_blocks", 0) * scale * costs.get("blocks_decode_verify_us", 0.0) / 1000,
            "delivered": (m1["delivered"] - m0["delivered"]) * scale,
            "published": (m1["published"] - m0["published"]) * scale,
        }
    return out


def print_traffic(rows: list[dict[str, Any]]) -> None:
    rows = [r for r in rows if "traffic" in r["marks"]["end"]]
    if not rows:
        return
    print()
    costs = check_costs(rows)
    print("received per node per virtual second (overall: from node 0's start, join burst included; steady: after it);")
    print("'+ verify' adds, per status and block received, the lowest decode+verify cost measured in these runs: "
          + ", ".join(f"{k.split('_')[0]} {v:.1f} µs" for k, v in costs.items()))
    head = ("nodes", "window", "virtual s", "statuses published", "status msgs", "status B", "blocks msgs", "blocks B",
            "stream B", "total KiB", "CPU ms", "CPU ms + verify")
    print(" | ".join(head))
    for r in rows:
        for name, v in rates(r, costs).items():
            a, b = window(r, name)
            print(" | ".join((
                str(r["nodes"]), name, f"{a:.0f}-{b:.0f}", f"{v['published']:.3f}", f"{v['status_msgs']:.2f}",
                f"{v['status_bytes']:.0f}", f"{v['blocks_msgs']:.2f}", f"{v['blocks_bytes']:.0f}", f"{v['stream_bytes']:.0f}",
                f"{v['total_bytes'] / 1024:.2f}", f"{v['cpu_ms']:.3f}", f"{v['cpu_ms_real_est']:.3f}",
            )))
    print()
    head2 = ("nodes", "status mean B", "block mean B", "status copies", "block copies", "stream B (sync)",
            "node bytes min/median/max", "status memo checked/hits", "status decode µs", "status decode+verify µs",
            "block decode+verify µs")
    print(" | ".join(head2))
    for r in rows:
        t = r["marks"]["end"]["traffic"]
        memo = r.get("status_memo", {})
        print(" | ".join((
            str(r["nodes"]), f"{t.get('bytes_status', 0) / max(1, t.get('msgs_status', 0)):.1f}",
            f"{t.get('bytes_blocks', 0) / max(1, t.get('msgs_blocks', 0)):.1f}", str(t.get("msgs_status", 0)),
            str(t.get("msgs_blocks", 0)), str(sum(v for k, v in t.items() if k.startswith("bytes_stream_"))),
            "/".join(str(x) for x in r["node_bytes_min_median_max"]), f"{memo.get('checked', 0)}/{memo.get('hits', 0)}",
            f"{r.get('status_decode_us', float('nan')):.1f}", f"{r.get('status_decode_verify_us', float('nan')):.1f}",
            f"{r.get('blocks_decode_verify_us', float('nan')):.1f}",
        )))


def cpu_spread(series: dict[str, list[dict[str, Any]]]) -> dict[int, dict[str, tuple[float, float, float]]]:
    """Per N and window, (median, min, max) over the series of CPU ms per node per virtual
    second, measured and with decode+verify added (``<window>`` and ``<window>+verify``):
    the series are repeats of one configuration, and CPU time swings with the load on
    shared cores while the traffic does not."""
    rows = [r for rows in series.values() for r in rows if "traffic" in r["marks"]["end"]]
    costs = check_costs(rows)
    values: defaultdict[int, defaultdict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for win, v in rates(r, costs).items():
            values[r["nodes"]][win].append(v["cpu_ms"])
            values[r["nodes"]][win + "+verify"].append(v["cpu_ms_real_est"])
    out: dict[int, dict[str, tuple[float, float, float]]] = {}
    for n, per in sorted(values.items()):
        out[n] = {}
        for key, xs in per.items():
            xs.sort()
            mid = xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
            out[n][key] = (mid, xs[0], xs[-1])
    return out


def print_cpu_spread(series: dict[str, list[dict[str, Any]]]) -> None:
    spread = cpu_spread(series)
    print()
    print(f"CPU ms per node per virtual second over {len(series)} series: median (min-max)")
    keys = sorted({k for per in spread.values() for k in per})
    print(" | ".join(("nodes", *keys)))
    for n, per in spread.items():
        print(" | ".join((str(n), *(f"{per[k][0]:.3f} ({per[k][1]:.3f}-{per[k][2]:.3f})" if k in per else "" for k in keys))))


def plot_traffic(series: dict[str, list[dict[str, Any]]], path: str) -> None:
    """Messages, KiB and CPU ms per node per virtual second vs N (log x): steady solid,
    overall dashed, join dotted. The series are repeats of one configuration: traffic from
    the first series that has each N, CPU as the median with min-max bars over all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for rows in series.values() for r in rows if "traffic" in r["marks"]["end"]]
    first: dict[int, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(r["nodes"], r)
    xs = sorted(first)
    costs = check_costs(rows)
    traffic = {n: rates(first[n], costs) for n in xs}
    spread = cpu_spread(series)
    styles = (("steady", "o-", 1.0), ("overall", "s--", 0.6), ("join", "^:", 0.6))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    panels = (
        ("pubsub messages received per node per s", (("status", "status_msgs"), ("blocks", "blocks_msgs")), 1.0),
        ("KiB received per node per s", (("status", "status_bytes"), ("blocks", "blocks_bytes"),
                                         ("sync streams", "stream_bytes"), ("total", "total_bytes")), 1 / 1024),
    )
    for ax, (title, lines, scale) in zip(axes, panels):
        for i, (name, key) in enumerate(lines):
            for win, style, alpha in styles:
                pts = [(n, scale * traffic[n][win][key]) for n in xs if win in traffic[n]]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f"C{i}", alpha=alpha, label=f"{name}, {win}")
        ax.set_title(title, fontsize=10)
    ax = axes[2]
    verify = costs.get("status_decode_verify_us", 0.0)
    for i, (name, suffix) in enumerate((("measured, one process", ""),
                                        (f"+ decode+verify of each status ({verify:.0f} µs) and block", "+verify"))):
        for win, style, alpha in styles:
            cpu = [(n, spread[n][win + suffix]) for n in xs if win + suffix in spread[n]]
            if cpu:
                mid = [c[1][0] for c in cpu]
                err = [[c[1][0] - c[1][1] for c in cpu], [c[1][2] - c[1][0] for c in cpu]]
                ax.errorbar([c[0] for c in cpu], mid, yerr=err, fmt=style, color=f"C{i}", alpha=alpha, capsize=3,
                            label=f"{name}, {win}")
    ax.set_title(f"CPU ms per node per s (median, min-max of {len(series)} runs)", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel("nodes")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle("Gossip-only nodes on the memory transport. overall: first 60 virtual s, all nodes joining (dashed); "
                 "steady: 60-360 s (solid); join: 10 s after one more node joins (dotted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
    ap.add_argument("--overall", type=float, default=60.0,
                    help="traffic rates' 'overall' window: node 0's start to this many virtual s after the last start")
    ap.add_argument("--settle", type=float, default=60.0,
                    help="traffic rates' 'steady' window: this many virtual s after the last start to the end")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", help="write a cProfile of the (single) run to this file")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--plot", help="write a PNG of per-node cost vs N to this file")
    ap.add_argument("--series", action="append", default=[], metavar="LABEL=JSON",
                    help="also draw rows that --json wrote earlier (repeatable)")
    ap.add_argument("--plot-traffic", help="write a PNG of messages, KiB and CPU ms per node per virtual second vs N "
                    "(with --series: repeats of one configuration, CPU drawn as median and min-max)")
    ap.add_argument("--without-ledger", action="store_true", help="diagnostic: nodes run no ledger service")
    ap.add_argument("--no-traffic", action="store_true", help="do not wrap the transport to count traffic")
    ap.add_argument("--join", action="store_true",
                    help=f"after --seconds, one more node joins; count the next {JOIN_WINDOW:.0f} virtual s ('join' window)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: one run, one JSON line
    opts = ap.parse_args()
    if opts.one:
        print(json.dumps(run_one(opts.one, opts.seconds, opts.seed, opts.profile, opts.without_ledger, not opts.no_traffic,
                                 opts.overall, opts.settle, opts.join)))
        return
    rows = []
    for n in opts.nodes:
        rows.append(run_fresh(n, opts.seconds, opts.seed, opts.profile, opts.without_ledger, not opts.no_traffic,
                              opts.overall, opts.settle, opts.join))
        print(f"  {n} nodes: {rows[-1]['total_wall_s']:.1f} s wall", file=sys.stderr, flush=True)
    if rows:
        print_table(rows)
        print_traffic(rows)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1) + "\n")
    series = {label: json.loads(Path(file).read_text()) for label, file in (s.split("=", 1) for s in opts.series)}
    if rows:
        series["this run"] = rows
    if opts.plot:
        plot(series, opts.plot)
    if len(series) > 1:
        print_cpu_spread(series)
    if opts.plot_traffic:
        plot_traffic(series, opts.plot_traffic)


if __name__ == "__main__":
    main()
