"""Simulator metrics: failures count as misses, the sweep mean, percentiles, goodput."""

from __future__ import annotations

from p2pserve.sim.metrics import Record, percentile, slo_curve, summarize


def rec(i: int, latency: float | None, *, ttft: float = 1.0, tokens: int = 11, executor: int = 0) -> Record:
    return Record(f"r{i}", 0, float(i), latency is not None, latency, ttft if latency is not None else None, tokens, executor)


def test_failures_are_misses_at_every_threshold() -> None:
    records = [rec(0, 50.0), rec(1, 150.0), rec(2, None), rec(3, None)]
    curve = dict(slo_curve(records, [100, 200]))
    assert curve == {100: 0.25, 200: 0.5}  # the two failures stay in the denominator


def test_summary_numbers() -> None:
    records = [rec(i, 10.0 * (i + 1), executor=i % 2) for i in range(10)] + [rec(10, None)]
    s = summarize(records, duration=100.0, nodes=2, thresholds=[50, 100], ttft_slo=2.0, tpot_slo=100.0)
    assert s.completed == 10 and s.failed == 1
    assert s.slo_attainment == (5 / 11 + 10 / 11) / 2
    assert s.latency_p50 == percentile([10.0 * (i + 1) for i in range(10)], 50) == 55.0
    assert s.goodput == 10 / 100.0 and s.load_balance_cv == 0.0
    assert s.as_dict()["completed"] == 10


def test_tpot_and_ttft_objectives() -> None:
    fast, slow = rec(0, 11.0, ttft=1.0), rec(1, 101.0, ttft=1.0)  # 10 tokens after the first: 1 s vs 10 s each
    s = summarize([fast, slow], duration=10.0, nodes=1, thresholds=[500], ttft_slo=5.0, tpot_slo=2.0)
    assert s.ttft_attainment == 1.0 and s.tpot_attainment == 0.5 and s.goodput == 0.1


def test_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
