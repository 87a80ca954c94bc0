"""The simulator's workloads (p2pserve.sim.workload): determinism, rates and burstiness,
length distributions, the Azure-shaped trace, trace helpers, churn, and the errors a
scenario gets for a bad mapping. Statistical checks use fixed seeds and bounds of several
standard errors, so they are deterministic and not tight enough to flake on a change of seed."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2pserve.errors import ConfigError
from p2pserve.rng import derive
from p2pserve.sim.workload import (
    AZURE_CODE,
    AZURE_CONV,
    REASONING_MAX,
    Churn,
    Fixed,
    Lengths,
    LogNormal,
    Quantiles,
    Reasoning,
    Request,
    Trace,
    Uniform,
    absent_at_start,
    azure_like,
    gamma_bursts,
    merge,
    poisson,
)
from p2pserve.sim.workload_parse import parse_churn, parse_dist, parse_lengths, parse_rates, parse_workload

ROOT = Path(__file__).resolve().parent.parent
SHORT = Lengths(Fixed(100), Fixed(20), max_tokens=64)
CHAT = Lengths(LogNormal(512, 1.0, max=8192), Reasoning(), task="math")
WWW_SERVE_B = [(0, [1 / 4, 1 / 20, 1 / 20, 1 / 20]), (300, [1 / 20, 1 / 20, 1 / 20, 1 / 20]), (450, [1 / 20, 1 / 20, 1 / 20, 1 / 4])]


def samples(dist: Any, n: int = 20_000, seed: int = 0) -> list[int]:
    rng = derive(seed, "test-dist")
    return [dist.sample(rng) for _ in range(n)]


def gaps(trace: Trace) -> list[float]:
    times = [0.0] + [r.arrival for r in trace]
    return [b - a for a, b in zip(times, times[1:])]


def cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- determinism ---------------------------------------------------------------------------


GENERATORS: dict[str, Callable[[int], Trace]] = {
    "poisson": lambda seed: poisson(WWW_SERVE_B, 750, CHAT, seed),
    "gamma": lambda seed: gamma_bursts(2.0, 3.0, 300, [1, 2, 0, 1], CHAT, seed),
    "azure": lambda seed: azure_like(200, 4, seed, rate=1.0),
    "parsed": lambda seed: parse_workload([{"kind": "azure", "duration": 100, "entries": 2},
                                           {"kind": "gamma", "duration": 100, "rate": 1, "cv": 2, "prompt": 10, "output": 5}], seed),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_same_seed_same_trace_other_seed_other_trace(kind: str) -> None:
    make = GENERATORS[kind]
    assert make(7) == make(7)
    assert make(7).requests != make(8).requests
    assert len(make(7)) > 50


def test_a_trace_is_the_same_in_another_process() -> None:
    """Nothing depends on hash randomization or process state."""
    code = "from p2pserve.sim.workload import azure_like; print(repr(azure_like(100, 3, 'x', trace='code').requests))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)}  # fmt: skip
    assert len(outs) == 1 and "Request(key='r0'" in outs.pop()


def test_lengths_draw_from_their_own_stream() -> None:
    """A scenario that changes its lengths keeps every arrival time and entry node."""
    makers: list[Callable[[Lengths], Trace]] = [lambda ls: poisson(WWW_SERVE_B, 750, ls, 3), lambda ls: gamma_bursts(1.0, 2.0, 500, 3, ls, 3)]
    for make in makers:
        a, b = make(SHORT), make(CHAT)
        assert [(r.arrival, r.entry) for r in a] == [(r.arrival, r.entry) for r in b]
        assert [r.output_tokens for r in a] != [r.output_tokens for r in b]


def test_one_nodes_rates_do_not_move_another_nodes_requests() -> None:
    a = poisson([(0, [1.0, 0.5])], 300, SHORT, 1)
    b = poisson([(0, [3.0, 0.5])], 300, SHORT, 1)
    assert [r.arrival for r in a if r.entry == 1] == [r.arrival for r in b if r.entry == 1]


def test_twenty_thousand_requests_take_well_under_a_second() -> None:
    start = time.process_time()
    trace = gamma_bursts(20.0, 2.0, 1000, 8, CHAT, 1)
    elapsed = time.process_time() - start
    assert len(trace) > 19_000
    assert elapsed < 1.0, elapsed


def test_the_module_is_pure() -> None:
    """tests/test_layering.py's rule for pure modules: no I/O library, even transitively."""
    code = "import sys, p2pserve.sim.workload, p2pserve.sim.judge; print(' '.join(sorted(sys.modules)))"
    loaded = {m.split(".")[0] for m in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()}
    assert loaded & {"trio", "httpx", "libp2p", "transports", "sqlite3", "socket"} == set()


# --- rates -----------------------------------------------------------------------------


def within(count: int, expected: float, sds: float = 5.0) -> bool:
    """A Poisson count within ``sds`` standard deviations of its mean."""
    return abs(count - expected) <= sds * math.sqrt(expected)


def test_poisson_rates_are_honoured_per_node_and_per_step() -> None:
    schedule = [(0, [2.0, 0.5, 0.0]), (2000, [0.5, 2.0, 1.0]), (4000, [0.0, 0.0, 3.0])]
    trace = poisson(schedule, 5000, SHORT, 11)
    windows = [(0, 2000), (2000, 4000), (4000, 5000)]
    for (start, end), (_, rates) in zip(windows, schedule):
        for node, rate in enumerate(rates):
            count = sum(1 for r in trace if r.entry == node and start <= r.arrival < end)
            assert within(count, rate * (end - start)), (start, node, count)
            if rate == 0:
                assert count == 0


def test_poisson_matches_wwwserve_version_b() -> None:
    """About 97 / 37 / 37 / 97 requests per node over 750 s (research/wwwserve.md §8.4)."""
    totals = [0, 0, 0, 0]
    for seed in range(40):
        for node, n in poisson(WWW_SERVE_B, 750, SHORT, seed).per_entry().items():
            totals[node] += n
    for node, expected in enumerate([97.5, 37.5, 37.5, 97.5]):
        assert within(totals[node], expected * 40), (node, totals[node])


def test_poisson_inter_arrivals_are_exponential() -> None:
    trace = poisson([(0, [4.0])], 5000, SHORT, 2)
    assert abs(cv(gaps(trace)) - 1.0) < 0.05
    assert all(0 < r.arrival < 5000 for r in trace)


@pytest.mark.parametrize("target", [0.5, 1.0, 2.0, 4.0])
def test_gamma_inter_arrivals_have_the_requested_cv_and_rate(target: float) -> None:
    trace = gamma_bursts(10.0, target, 4000, 1, SHORT, 5)
    assert abs(cv(gaps(trace)) - target) < 0.1 * target
    assert abs(len(trace) / 4000 - 10.0) < 0.5


def test_gamma_with_cv_zero_is_a_fixed_period() -> None:
    trace = gamma_bursts(0.25, 0.0, 100, 1, SHORT, 0)
    assert [r.arrival for r in trace] == [4.0 * k for k in range(1, 25)]


def test_gamma_bursts_are_bursty() -> None:
    """cv > 1: more requests share a busy second than a Poisson process would put there."""
    def busiest(c: float) -> int:
        counts: dict[int, int] = {}
        for r in gamma_bursts(2.0, c, 3000, 1, SHORT, 9):
            counts[int(r.arrival)] = counts.get(int(r.arrival), 0) + 1
        return max(counts.values())

    assert busiest(6.0) > 2 * busiest(1.0)


def test_entries_follow_their_weights_and_a_zero_weight_never_enters() -> None:
    trace = gamma_bursts(20.0, 1.0, 1000, [3, 1, 0, 4], SHORT, 4)
    counts = trace.per_entry()
    assert 2 not in counts
    total = len(trace)
    for node, weight in ((0, 3), (1, 1), (3, 4)):
        assert abs(counts[node] / total - weight / 8) < 0.02
    uniform = gamma_bursts(20.0, 1.0, 1000, 4, SHORT, 4).per_entry()
    assert sorted(uniform) == [0, 1, 2, 3] and max(uniform.values()) - min(uniform.values()) < 0.1 * total / 4


# --- lengths -------------------------------------------------------------------------------


def test_fixed_and_uniform() -> None:
    assert set(samples(Fixed(37), 100)) == {37}
    values = samples(Uniform(10, 20))
    assert min(values) == 10 and max(values) == 20
    assert abs(statistics.fmean(values) - 15) < 0.2


def test_lognormal_median_and_cap() -> None:
    values = samples(LogNormal(512, 1.0, max=2048))
    assert abs(statistics.median(values) / 512 - 1) < 0.05
    assert max(values) == 2048 and min(values) >= 1
    assert sum(v == 2048 for v in values) / len(values) == pytest.approx(0.083, abs=0.01)  # P(Z > ln 4)


def test_lognormal_from_mean_or_from_p50_and_p90() -> None:
    by_mean = parse_dist({"dist": "lognormal", "mean": 1000, "sigma": 0.8}, "d")
    assert abs(statistics.fmean(samples(by_mean, 50_000)) / 1000 - 1) < 0.03
    by_quantiles = parse_dist({"dist": "lognormal", "p50": 400, "p90": 1600}, "d")
    values = samples(by_quantiles, 50_000)
    assert abs(quantile(values, 0.5) / 400 - 1) < 0.03
    assert abs(quantile(values, 0.9) / 1600 - 1) < 0.05


def test_reasoning_lengths_are_long_and_heavy_tailed() -> None:
    values = samples(Reasoning())
    median, mean = statistics.median(values), statistics.fmean(values)
    assert 2500 < median < 3500 and 2000 < mean < 7000  # research B4: 2k-7k on average
    assert mean > 1.3 * median
    assert quantile(values, 0.99) > 6 * median  # log-normal, sigma 0.9: 8.1x
    assert max(values) <= REASONING_MAX
    assert 0.10 < sum(v > 8192 for v in values) / len(values) < 0.16


def test_reasoning_loops_run_to_the_cap_and_requests_truncate_at_max_tokens() -> None:
    values = samples(Reasoning(loop=0.2, max=16384))
    assert 0.19 < sum(v == 16384 for v in values) / len(values) < 0.23
    trace = gamma_bursts(5.0, 1.0, 400, 2, Lengths(Fixed(50), Reasoning(loop=0.2), max_tokens=8192), 0)
    truncated = [r for r in trace if r.truncated]
    assert truncated and all(r.generated == 8192 < r.output_tokens for r in truncated)
    assert all(r.generated == r.output_tokens for r in trace if not r.truncated)


@pytest.mark.parametrize("stats", [AZURE_CONV, AZURE_CODE], ids=lambda s: s.name)
def test_quantiles_reproduce_the_azure_tables(stats: Any) -> None:
    for points in (stats.prompt, stats.output):
        values = samples(Quantiles(points), 50_000)
        for q, tokens in points:  # tokens is the q-quantile: P(X < tokens) <= q <= P(X <= tokens)
            below, at_most = (sum(v < tokens for v in values) / len(values), sum(v <= tokens for v in values) / len(values))
            assert below - 0.005 <= q <= at_most + 0.005, (q, tokens, below, at_most)
        assert points[0][1] <= min(values) and max(values) <= points[-1][1]


def test_azure_like_has_the_traces_rate_cv_and_lengths() -> None:
    trace = azure_like(3000, 4, 1)
    assert abs(len(trace) / 3000 - AZURE_CONV.rate) < 0.2
    assert abs(cv(gaps(trace)) - AZURE_CONV.cv) < 0.1
    assert abs(statistics.median(r.prompt_tokens for r in trace) / 1020 - 1) < 0.05
    assert abs(statistics.fmean(r.output_tokens for r in trace) / 211 - 1) < 0.1
    scaled = azure_like(3000, 5, 1, rate=AZURE_CONV.rate / 30)  # WWW.Serve kept every 30th row
    assert within(len(scaled), 3000 * AZURE_CONV.rate / 30)
    assert azure_like(100, 1, 1, trace="code", max_tokens=4, task="code").requests[0].task == "code"


# --- traces --------------------------------------------------------------------------------


def req(key: str, arrival: float, entry: int = 0) -> Request:
    return Request(key, arrival, entry, 10, 5, 16)


def test_trace_helpers() -> None:
    trace = Trace.of([req("b", 5.0, 1), req("a", 1.0, 0), req("c", 5.0, 0)], duration=10.0)
    assert [r.key for r in trace] == ["a", "c", "b"]  # ties by entry
    assert trace.count == len(trace) == 3 and trace.per_entry() == {0: 2, 1: 1} and trace.nodes() == 2
    assert [r.arrival for r in trace.shift(2.5)] == [3.5, 7.5, 7.5] and trace.shift(2.5).duration == 12.5
    cut = trace.slice(2.0, 6.0)
    assert [(r.key, r.arrival) for r in cut] == [("c", 3.0), ("b", 3.0)] and cut.duration == 4.0
    assert [r.key for r in trace.rekey("x")] == ["x0", "x1", "x2"]
    assert Trace.of([]).duration == 0 and Trace.of([]).nodes() == 0


def test_merge_interleaves_and_rekeys() -> None:
    a, b = gamma_bursts(1.0, 1.0, 100, 1, SHORT, 1), gamma_bursts(1.0, 1.0, 200, [0, 1], SHORT, 2).shift(10)
    merged = merge(a, b)
    assert len(merged) == len(a) + len(b) and merged.duration == 210
    assert [r.key for r in merged] == [f"r{i}" for i in range(len(merged))]
    assert [r.arrival for r in merged] == sorted(r.arrival for r in merged)
    with pytest.raises(ConfigError, match="keys must be unique"):
        merge(a, b, rekey=False)
    assert merge(a, b.rekey("b"), rekey=False).count == len(merged)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Trace((req("a", 2.0), req("b", 1.0)), 5.0), "requests: must be sorted"),
        (lambda: Trace((req("a", 7.0),), 5.0), "duration: must cover"),
        (lambda: req("a", 1.0).__class__("a", -1.0, 0, 1, 1, 1), "arrival"),
        (lambda: Request("a", 1.0, 0, 0, 1, 1), "prompt_tokens"),
        (lambda: Request("", 1.0, 0, 1, 1, 1), "key"),
        (lambda: Trace.of([req("a", 1.0)]).shift(-2.0), "arrival"),
    ],
)
def test_invalid_requests_and_traces(build: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()


# --- parsing -------------------------------------------------------------------------------


def test_parse_dist_forms() -> None:
    assert parse_dist(128, "p") == Fixed(128)
    assert parse_dist({"dist": "uniform", "low": 1, "high": 9}, "p") == Uniform(1, 9)
    assert parse_dist({"dist": "lognormal", "median": 512, "sigma": 1.0, "max": 8192}, "p") == LogNormal(512, 1.0, max=8192)
    assert parse_dist({"dist": "reasoning", "loop": 0.1}, "p") == Reasoning(loop=0.1)
    assert parse_dist({"dist": "quantiles", "points": {0: 1, 0.5: 10, 1: 100}}, "p") == Quantiles(((0, 1), (0.5, 10), (1, 100)))
    assert parse_dist({"dist": "azure-code-output"}, "p") == Quantiles(AZURE_CODE.output)
    assert parse_lengths({"prompt": 5, "output": {"dist": "fixed", "value": 7.0}, "task": "t"}, "l") == Lengths(Fixed(5), Fixed(7), task="t")


def test_parse_rates_forms() -> None:
    pairs = parse_rates([[0, [1, 2]], [10, [0, 0.5]]], "r")
    assert pairs == ((0.0, (1.0, 2.0)), (10.0, (0.0, 0.5)))
    assert parse_rates([{"at": 0, "rates": [1, 2]}, {"at": 10, "rates": [0, 0.5]}], "r") == pairs


def test_parse_workload_merges_shifts_and_keeps_items_independent() -> None:
    poisson_item = {"kind": "poisson", "duration": 750, "rates": [[0, [0.25, 0.05]], [300, [0.05, 0.25]]],
                    "prompt": {"dist": "lognormal", "p50": 512, "p90": 2048}, "output": {"dist": "reasoning"}, "max_tokens": 8192}
    azure_item = {"kind": "azure", "duration": 600, "rate": 0.2, "entries": [0, 0, 1], "start": 100, "task": "chat"}  # fmt: skip
    both = parse_workload([poisson_item, azure_item], seed=3)
    alone = parse_workload([poisson_item], seed=3)
    assert both.duration == 750 and both.nodes() == 3
    assert all(r.arrival >= 100 and r.task == "chat" for r in both if r.entry == 2)
    assert [r.arrival for r in both if r.entry < 2] == [r.arrival for r in alone]
    assert parse_workload(poisson_item, seed=3) == alone  # one mapping is a list of one


BAD_WORKLOADS = [
    ({"kind": "nope", "duration": 1}, "workload.kind: must be one of"),
    ({"kind": "gamma", "rate": 1, "cv": 1, "prompt": 1, "output": 1}, "workload.duration: missing"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": -1, "prompt": 1, "output": 1}, r"workload.cv: must be .* \(got -1.0\)"),
    ({"kind": "gamma", "duration": 10, "rate": 0, "cv": 1, "prompt": 1, "output": 1}, "workload.rate: must be"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1}, "workload.output: missing"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": 1, "extra": 2}, "workload.extra: unknown key"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": 1, "entries": [0, 0]}, "workload.entries"),
    ({"kind": "gamma", "duration": "x", "rate": 1, "cv": 1, "prompt": 1, "output": 1}, "workload.duration: must be a finite number"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": 1, "max_tokens": 0}, "workload.max_tokens"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": 1, "start": -1}, "workload.start"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": {"dist": "x"}, "output": 1}, "workload.prompt.dist: must be one of"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "lognormal", "median": 5, "sigma": -1}}, "workload.output.sigma: must be >= 0"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "lognormal", "median": 5}}, "workload.output: give median and sigma"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "lognormal", "p50": 5, "p90": 4}}, "workload.output.p90"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "lognormal", "median": 5, "sigma": 1, "min": 10, "max": 2}}, "workload.output.max: must be an integer >= min"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "fixed", "value": 5, "x": 1}}, "workload.output.x: unknown key"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "reasoning", "loop": 2}}, "workload.output.loop"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "uniform", "low": 5, "high": 4}}, "workload.output.high"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "quantiles", "points": [[0, 1], [0.5, 3]]}}, "workload.output.points"),
    ({"kind": "gamma", "duration": 10, "rate": 1, "cv": 1, "prompt": 1, "output": {"dist": "quantiles", "points": [[0, 1], "x"]}}, r"workload.output.points\[1\]"),
    ({"kind": "poisson", "duration": 10, "rates": [[1, [1]]], "prompt": 1, "output": 1}, r"workload.rates\[0\]\[0\]: starts must begin at 0"),
    ({"kind": "poisson", "duration": 10, "rates": [[0, [1]], [0, [1]]], "prompt": 1, "output": 1}, r"workload.rates\[1\]\[0\]"),
    ({"kind": "poisson", "duration": 10, "rates": [{"at": 0, "rates": [1]}, {"at": 5, "rates": [1, 2]}], "prompt": 1, "output": 1}, r"workload.rates\[1\].rates: must be 1"),
    ({"kind": "poisson", "duration": 10, "rates": [[0, [-1]]], "prompt": 1, "output": 1}, r"workload.rates\[0\]\[1\]"),
    ({"kind": "poisson", "duration": 10, "rates": [], "prompt": 1, "output": 1}, "workload.rates: must be a non-empty list"),
    ({"kind": "azure", "duration": 10, "trace": "x"}, "workload.trace: must be one of"),
    ([{"kind": "azure", "duration": 10}, {"kind": "azure", "duration": 10, "rate": -1}], r"workload\[1\].rate"),
    ("poisson", "workload: must be a non-empty list"),
]


@pytest.mark.parametrize(("data", "match"), BAD_WORKLOADS)
def test_bad_workloads_name_the_key(data: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_workload(data, seed=0)


# --- churn ---------------------------------------------------------------------------------


def test_parse_churn_forms_order_and_initial_absence() -> None:
    churn = parse_churn([{"time": 600, "node": 5, "action": "join"}, [120, 4, "leave"], [800, 4, "join"]], nodes=6)
    assert churn == (Churn(120.0, 4, "leave"), Churn(600.0, 5, "join"), Churn(800.0, 4, "join"))
    assert absent_at_start(churn) == {5}
    assert parse_churn(None) == ()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([[1, 2, "leave"], [3, 2, "leave"]], r"churn\[1\].action: node 2 would leave twice"),
        ([[1, 2, "boom"]], r"churn\[0\].action: must be 'join' or 'leave'"),
        ([{"time": 1, "node": -1, "action": "join"}], r"churn\[0\].node"),
        ([{"time": 1, "node": 1}], r"churn\[0\].action: missing"),
        ([{"time": 1, "node": 1, "action": "join", "why": "x"}], r"churn\[0\].why: unknown key"),
        ([[1, 9, "join"]], r"churn\[0\].node: must be below the node count 6"),
        ([[-1, 1, "join"]], r"churn\[0\].time"),
        ("x", "churn: must be a non-empty list"),
    ],
)
def test_bad_churn_names_the_key(data: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_churn(data, nodes=6)
