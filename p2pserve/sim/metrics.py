"""What a simulated run measured, and the numbers the paper's figures plot. Pure.

One :class:`Record` per submitted request. Every statistic counts **every submitted
request**: a request that failed, timed out or was still running at the end is a miss for
every SLO (WWW.Serve's scripts dropped failed requests from the denominator, which makes
an overloaded system look better the more it fails).

* **Global SLO attainment(T)**: the share of all requests, pooled over all entry nodes,
  answered with end-to-end latency ≤ T. The headline of a run is its mean over the
  threshold sweep (WWW.Serve's: 100-490 s in 10 s steps).
* **TTFT / TPOT attainment**: the share meeting a time-to-first-token, and a
  time-per-output-token, objective; **goodput**: requests per second meeting both
  (DistServe's definition).
* Latency mean and percentiles over the completed requests; per-node load balance (how
  evenly executions spread: the coefficient of variation of executed requests).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_THRESHOLDS", "Record", "Summary", "percentile", "slo_curve", "summarize"]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in range(100, 500, 10))
"""End-to-end latency thresholds (s) of the SLO sweep: WWW.Serve's 100-490 s."""


@dataclass(frozen=True, slots=True)
class Record:
    """One submitted request, as the runner saw it."""

    key: str
    entry: int
    arrival: float
    """Virtual seconds from the start of the run."""
    ok: bool
    """Answered completely."""
    latency: float | None = None
    """Arrival to the last token (s); None when not answered."""
    ttft: float | None = None
    output_tokens: int = 0
    executor: int | None = None
    """The node index that produced (the end of) the answer."""
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.latency is None or self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p`` percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def slo_curve(records: Sequence[Record], thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> list[tuple[float, float]]:
    """``(T, attainment)`` for each threshold: the share of all records answered within T."""
    n = len(records)
    lat = sorted(r.latency for r in records if r.ok and r.latency is not None)
    out = []
    i = 0
    for t in sorted(thresholds):
        while i < len(lat) and lat[i] <= t:
            i += 1
        out.append((t, i / n if n else 0.0))
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    """The numbers of one strategy's run (``result.json``'s ``summary.<strategy>``)."""

    slo_attainment: float
    slo_curve: list[tuple[float, float]]
    latency_mean: float | None
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    ttft_p50: float | None
    ttft_p90: float | None
    tpot_p50: float | None
    ttft_attainment: float
    tpot_attainment: float
    goodput: float
    """Requests per second meeting both the TTFT and the TPOT objective."""
    completed: int
    failed: int
    load_balance_cv: float
    """Coefficient of variation of executed requests per node (0: perfectly even)."""

    def as_dict(self) -> dict[str, object]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        return {
            "slo_attainment": round(self.slo_attainment, 6),
            "slo_curve": [[t, round(a, 6)] for t, a in self.slo_curve],
            "latency_mean": r(self.latency_mean), "latency_p50": r(self.latency_p50),
            "latency_p90": r(self.latency_p90), "latency_p99": r(self.latency_p99),
            "ttft_p50": r(self.ttft_p50), "ttft_p90": r(self.ttft_p90), "tpot_p50": r(self.tpot_p50),
            "ttft_attainment": round(self.ttft_attainment, 6), "tpot_attainment": round(self.tpot_attainment, 6),
            "goodput": round(self.goodput, 6), "completed": self.completed, "failed": self.failed,
            "load_balance_cv": round(self.load_balance_cv, 6),
        }


def summarize(
    records: Sequence[Record],
    duration: float,
    nodes: int,
    *,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    ttft_slo: float = 10.0,
    tpot_slo: float = 0.2,
) -> Summary:
    """The summary of one run of ``duration`` virtual seconds over ``nodes`` nodes."""
    n = len(records)
    curve = slo_curve(records, thresholds)
    done = [r for r in records if r.ok and r.latency is not None]
    lat = [r.latency for r in done if r.latency is not None]
    ttfts = [r.ttft for r in done if r.ttft is not None]
    tpots = [t for r in done if (t := r.tpot) is not None]
    ttft_ok = [r for r in done if r.ttft is not None and r.ttft <= ttft_slo]
    tpot_ok = [r for r in done if r.tpot is None or r.tpot <= tpot_slo]
    both = [r for r in ttft_ok if r.tpot is None or r.tpot <= tpot_slo]
    executed = Counter(r.executor for r in done if r.executor is not None)
    counts = [executed.get(i, 0) for i in range(nodes)]
    mean = sum(counts) / nodes if nodes else 0.0
    cv = math.sqrt(sum((c - mean) ** 2 for c in counts) / nodes) / mean if mean else 0.0
    return Summary(
        slo_attainment=sum(a for _, a in curve) / len(curve) if curve else 0.0,
        slo_curve=curve,
        latency_mean=sum(lat) / len(lat) if lat else None,
        latency_p50=percentile(lat, 50), latency_p90=percentile(lat, 90), latency_p99=percentile(lat, 99),
        ttft_p50=percentile(ttfts, 50), ttft_p90=percentile(ttfts, 90), tpot_p50=percentile(tpots, 50),
        ttft_attainment=len(ttft_ok) / n if n else 0.0,
        tpot_attainment=len(tpot_ok) / n if n else 0.0,
        goodput=len(both) / duration if duration > 0 else 0.0,
        completed=len(done),
        failed=n - len(done),
        load_balance_cv=cv,
    )
