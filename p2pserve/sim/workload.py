"""The simulator's workloads: when each request arrives, at which node, how long its prompt
and answer are; and when nodes join and leave.

Pure: no trio, no I/O, no clock. A trace is a function of its parameters and a seed; every
stream comes from :func:`p2pserve.rng.derive` with its own labels, and arrivals, entry nodes
and lengths draw from separate streams, so changing a scenario's lengths leaves its arrival
times as they were. Generators return a :class:`Trace` keyed ``r0, r1, ...`` in arrival order:

* :func:`poisson`: WWW.Serve's ``tests/generate_poisson.py`` (``research/wwwserve.md`` §8.4):
  per-node exponential inter-arrivals at piecewise-constant rates ("hot spots that move").
* :func:`gamma_bursts`: BurstGPT's arrival model (arXiv 2401.17644; ``duel-and-simulation.md``
  B4): Gamma inter-arrivals with a chosen CV (1 Poisson, > 1 bursty, 0 a fixed period).
* :func:`azure_like`: :func:`gamma_bursts` at the rate and CV of the Azure LLM inference trace
  2023, with its prompt and output quantiles (:data:`AZURE_CONV`, :data:`AZURE_CODE`). A
  renewal process matches the CV, not the trace's slow swings (37 to 507 requests a minute
  in ``conv``): model those with :func:`poisson` steps.

A request's ``output_tokens`` is what it would generate uncapped; above ``max_tokens`` it
ends with ``finish_reason: length``. Scenario mappings are parsed by
:mod:`p2pserve.sim.workload_parse`.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import operator
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from p2pserve.errors import ConfigError
from p2pserve.rng import derive

__all__ = [
    "AZURE_CODE",
    "AZURE_CONV",
    "AZURE_TRACES",
    "DEFAULT_MAX_TOKENS",
    "REASONING_MAX",
    "REASONING_MEDIAN",
    "REASONING_SIGMA",
    "AzureTrace",
    "Churn",
    "Fixed",
    "LengthDist",
    "Lengths",
    "LogNormal",
    "Quantiles",
    "Reasoning",
    "Request",
    "Trace",
    "Uniform",
    "absent_at_start",
    "azure_like",
    "gamma_bursts",
    "merge",
    "poisson",
]

Seed: TypeAlias = int | str | bytes
Schedule: TypeAlias = tuple[tuple[float, tuple[float, ...]], ...]
"""A rate schedule: ``((start_s, (rate of node 0, rate of node 1, ...)), ...)``, requests/s."""

DEFAULT_MAX_TOKENS = 8192
"""WWW.Serve's ``max_tokens`` in its SLO runs, thinking on (``research/wwwserve.md`` §8.5)."""
REASONING_MEDIAN = 3000
"""Tokens. Reasoning models average 2k-7k generated tokens on math (``duel-and-simulation.md``
B4); median 3000 with :data:`REASONING_SIGMA` gives a mean of about 4500 and 13 % of answers
past WWW.Serve's 8192 cap."""
REASONING_SIGMA = 0.9
"""Log-space spread of reasoning lengths: p90/p50 = 3.2, p99/p50 = 8.1."""
REASONING_MAX = 32768
"""Qwen3's recommended output budget (model card, via ``duel-and-simulation.md`` B4): where a
looping answer stops, unless the request's ``max_tokens`` is lower."""
_Z90 = 1.2815515655446004  # the standard normal's 90th percentile


def _field(ok: bool, key: str, reason: str, value: object) -> None:
    """Validation in ``__post_init__``: the message starts with the field's name, so the
    parsers can prefix it with the key path."""
    if not ok:
        raise ConfigError(f"{key}: {reason} (got {value!r})")


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _count(x: object, low: int = 1) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


# --- requests and traces -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One user request: arrives at ``arrival`` (virtual seconds) at node ``entry``; would
    generate ``output_tokens`` uncapped, stops at ``max_tokens``."""

    key: str
    arrival: float
    entry: int
    prompt_tokens: int
    output_tokens: int
    max_tokens: int
    task: str | None = None

    def __post_init__(self) -> None:
        _field(isinstance(self.key, str) and bool(self.key), "key", "must be a non-empty string", self.key)
        _field(_finite(self.arrival) and self.arrival >= 0, "arrival", "must be a finite time >= 0", self.arrival)
        _field(_count(self.entry, 0), "entry", "must be a node index >= 0", self.entry)
        for name in ("prompt_tokens", "output_tokens", "max_tokens"):
            _field(_count(getattr(self, name)), name, "must be an integer >= 1", getattr(self, name))

    @property
    def generated(self) -> int:
        """Tokens it actually generates: ``min(output_tokens, max_tokens)``."""
        return min(self.output_tokens, self.max_tokens)

    @property
    def truncated(self) -> bool:
        """Whether it hits ``max_tokens`` before its natural end."""
        return self.output_tokens > self.max_tokens


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests sorted by arrival, keys unique, within ``[0, duration]``.

    ``duration`` is the span the generator covered (a quiet tail counts), so
    ``trace.count / trace.duration`` is the offered rate. :meth:`of` sorts for you.
    """

    requests: tuple[Request, ...] = ()
    duration: float = 0.0

    def __post_init__(self) -> None:
        _field(_finite(self.duration) and self.duration >= 0, "duration", "must be a finite time >= 0", self.duration)
        times = [r.arrival for r in self.requests]
        _field(all(map(operator.le, times, times[1:])), "requests", "must be sorted by arrival", "unsorted")
        _field(not times or times[-1] <= self.duration, "duration", "must cover the last arrival", self.duration)
        twice = [k for k, n in Counter(r.key for r in self.requests).items() if n > 1]
        _field(not twice, "requests", "keys must be unique", sorted(twice)[:5])

    @classmethod
    def of(cls, requests: Iterable[Request], duration: float | None = None) -> Trace:
        """``requests`` in arrival order (ties: by entry, then as given); ``duration``
        defaults to the last arrival."""
        ordered = tuple(sorted(requests, key=lambda r: (r.arrival, r.entry)))
        return cls(ordered, duration if duration is not None else (ordered[-1].arrival if ordered else 0.0))

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    @property
    def count(self) -> int:
        return len(self.requests)

    def per_entry(self) -> dict[int, int]:
        """Requests per entry node (nodes that get any), in node order."""
        return dict(sorted(Counter(r.entry for r in self.requests).items()))

    def nodes(self) -> int:
        """How many nodes the trace needs: the highest entry index + 1 (0 when empty)."""
        return max((r.entry for r in self.requests), default=-1) + 1

    def shift(self, dt: float) -> Trace:
        """Every arrival and the duration later by ``dt`` s (earlier if negative, while no
        arrival goes below 0)."""
        return Trace(tuple(dataclasses.replace(r, arrival=r.arrival + dt) for r in self.requests), self.duration + dt)

    def slice(self, start: float, end: float) -> Trace:
        """The requests arriving in ``[start, end)``, re-based to start at 0 (keys kept)."""
        _field(0 <= start < end, "slice", "needs 0 <= start < end", (start, end))
        kept = (dataclasses.replace(r, arrival=r.arrival - start) for r in self.requests if start <= r.arrival < end)
        return Trace(tuple(kept), end - start)

    def rekey(self, prefix: str = "r") -> Trace:
        """The same requests keyed ``{prefix}0, {prefix}1, ...`` in arrival order."""
        return Trace(tuple(dataclasses.replace(r, key=f"{prefix}{i}") for i, r in enumerate(self.requests)), self.duration)


def merge(*traces: Trace, rekey: bool = True, prefix: str = "r") -> Trace:
    """All requests of ``traces`` in one trace as long as the longest. Every generator keys
    from ``r0``, so keys are renumbered unless ``rekey`` is false (then they must be unique)."""
    merged = sorted((r for t in traces for r in t.requests), key=lambda r: (r.arrival, r.entry))
    if rekey:
        merged = [dataclasses.replace(r, key=f"{prefix}{i}") for i, r in enumerate(merged)]
    return Trace(tuple(merged), max((t.duration for t in traces), default=0.0))


# --- length distributions ----------------------------------------------------------------


def _check_bounds(low: int, high: int | None) -> None:
    _field(_count(low), "min", "must be an integer >= 1", low)
    _field(high is None or (_count(high) and high >= low), "max", "must be an integer >= min", high)


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int | None) -> int:
    n = max(low, round(median * math.exp(sigma * rng.gauss(0.0, 1.0))))
    return n if high is None else min(n, high)


@dataclass(frozen=True, slots=True)
class Fixed:
    """Always ``value`` tokens."""

    value: int

    def __post_init__(self) -> None:
        _field(_count(self.value), "value", "must be an integer >= 1", self.value)

    def sample(self, rng: random.Random) -> int:
        return self.value


@dataclass(frozen=True, slots=True)
class Uniform:
    """An integer drawn evenly from ``[low, high]``, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        _field(_count(self.low), "low", "must be an integer >= 1", self.low)
        _field(_count(self.high) and self.high >= self.low, "high", "must be an integer >= low", self.high)

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """``median * exp(sigma * N(0, 1))``, rounded, clipped to ``[min, max]``: the usual shape
    of prompt and answer lengths (right-skewed, mean above median). :func:`parse_dist` also
    takes ``mean`` + ``sigma`` or ``p50`` + ``p90``, the forms the research quotes."""

    median: float
    sigma: float
    min: int = 1
    max: int | None = None

    def __post_init__(self) -> None:
        _field(_finite(self.median) and self.median > 0, "median", "must be > 0", self.median)
        _field(_finite(self.sigma) and self.sigma >= 0, "sigma", "must be >= 0", self.sigma)
        _check_bounds(self.min, self.max)

    def sample(self, rng: random.Random) -> int:
        return _lognormal(rng, self.median, self.sigma, self.min, self.max)


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Reasoning answers: log-normal in the thousands, clipped at ``max``; with probability
    ``loop`` an answer that repeats itself until ``max``.

    The research's model (``duel-and-simulation.md`` B4): log-normal per (model, task),
    clipped, with small models hitting the cap more often (give them a larger ``loop``), so a
    weak node both loses duels and holds KV cache longest.
    """

    median: float = REASONING_MEDIAN
    sigma: float = REASONING_SIGMA
    loop: float = 0.0
    max: int = REASONING_MAX
    min: int = 1

    def __post_init__(self) -> None:
        _field(_finite(self.median) and self.median > 0, "median", "must be > 0", self.median)
        _field(_finite(self.sigma) and self.sigma >= 0, "sigma", "must be >= 0", self.sigma)
        _field(_finite(self.loop) and 0 <= self.loop <= 1, "loop", "must be a probability", self.loop)
        _check_bounds(self.min, self.max)

    def sample(self, rng: random.Random) -> int:
        if self.loop and rng.random() < self.loop:
            return self.max
        return _lognormal(rng, self.median, self.sigma, self.min, self.max)


@dataclass(frozen=True, slots=True)
class Quantiles:
    """An empirical distribution given as ``((0, min), ..., (1, max))`` quantile points,
    sampled by inverse CDF, log-linear between points. It reproduces a trace's quantiles
    where a log-normal fitted to two misses the rest (Azure ``conv`` prompts: a log-normal
    through p50 and p90 puts p99 at 6100; the trace has 4142)."""

    points: tuple[tuple[float, int], ...]
    _qs: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _logs: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        qs, vs = [float(q) for q, _ in self.points], [v for _, v in self.points]
        ok = len(qs) >= 2 and qs[0] == 0 and qs[-1] == 1 and all(map(operator.lt, qs, qs[1:]))
        _field(ok, "points", "quantiles must rise strictly from 0 to 1", qs)
        ok = all(_count(v) for v in vs) and all(a <= b for a, b in zip(vs, vs[1:], strict=False))
        _field(ok, "points", "token counts must be integers >= 1, non-decreasing", vs)
        object.__setattr__(self, "_qs", tuple(qs))
        object.__setattr__(self, "_logs", tuple(math.log(v) for v in vs))

    def sample(self, rng: random.Random) -> int:
        u = rng.random()
        i = bisect.bisect_right(self._qs, u)  # 1 <= i < len: qs[0] = 0 <= u < 1 = qs[-1]
        q0, q1, l0, l1 = self._qs[i - 1], self._qs[i], self._logs[i - 1], self._logs[i]
        return round(math.exp(l0 + (l1 - l0) * (u - q0) / (q1 - q0)))


LengthDist: TypeAlias = Fixed | Uniform | LogNormal | Reasoning | Quantiles


@dataclass(frozen=True, slots=True)
class Lengths:
    """What a workload's requests look like: prompt and output length distributions, the
    ``max_tokens`` each asks for, an optional task label."""

    prompt: LengthDist
    output: LengthDist
    max_tokens: int = DEFAULT_MAX_TOKENS
    task: str | None = None

    def __post_init__(self) -> None:
        _field(_count(self.max_tokens), "max_tokens", "must be an integer >= 1", self.max_tokens)

    def draw(self, rng: random.Random) -> tuple[int, int]:
        """(prompt tokens, output tokens) of one request."""
        return self.prompt.sample(rng), self.output.sample(rng)


# --- the Azure LLM inference trace 2023 ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AzureTrace:
    """What :func:`azure_like` reproduces: mean rate (requests/s), inter-arrival CV, and
    (quantile, tokens) points of prompt and output lengths."""

    name: str
    rate: float
    cv: float
    prompt: tuple[tuple[float, int], ...]
    output: tuple[tuple[float, int], ...]


# Source: the Azure LLM inference trace 2023 (Splitwise, ISCA'24; Azure/AzurePublicDataset,
# AzureLLMInferenceDataset2023.md) as processed by Vidur (microsoft/vidur at 7d47513,
# data/processed_traces/splitwise_{conv,code}.csv). Rate = requests / (last - first arrival),
# CV of the inter-arrival gaps, nearest-rank quantiles, computed from those files: conv has
# 19,366 requests over 3,502 s, code 8,819 over 3,436 s (duel-and-simulation.md B4 agrees).
AZURE_CONV = AzureTrace(
    "conv", 5.53, 1.09,
    prompt=((0, 2), (0.01, 29), (0.05, 181), (0.1, 207), (0.25, 396), (0.5, 1020), (0.75, 1189), (0.9, 2735), (0.95, 4083), (0.99, 4142), (1, 14050)),
    output=((0, 7), (0.01, 16), (0.05, 41), (0.1, 54), (0.25, 85), (0.5, 129), (0.75, 395), (0.9, 424), (0.95, 451), (0.99, 601), (1, 1000)),
)  # fmt: skip
"""Conversation: 5.53 req/s, CV 1.09 (near Poisson); prompt mean 1155, output mean 211."""
AZURE_CODE = AzureTrace(
    "code", 2.57, 13.2,
    prompt=((0, 3), (0.01, 17), (0.05, 75), (0.1, 147), (0.25, 578), (0.5, 1469), (0.75, 2745), (0.9, 5194), (0.95, 7315), (0.99, 7436), (1, 7437)),
    output=((0, 6), (0.01, 6), (0.05, 6), (0.1, 7), (0.25, 9), (0.5, 13), (0.75, 24), (0.9, 55), (0.95, 90), (0.99, 252), (1, 1899)),
)  # fmt: skip
"""Code completion: 2.57 req/s, CV 13.2 (very bursty); prompt mean 2048, output mean 28."""
AZURE_TRACES: Mapping[str, AzureTrace] = {"code": AZURE_CODE, "conv": AZURE_CONV}


# --- generators ----------------------------------------------------------------------------


def _assemble(rows: list[tuple[float, int, int, int]], lengths: Lengths, duration: float) -> Trace:
    """A trace from (arrival, entry, prompt, output) rows: sorted, keyed ``r0, r1, ...``."""
    rows.sort(key=lambda row: (row[0], row[1]))
    mt, task = lengths.max_tokens, lengths.task
    return Trace(tuple(Request(f"r{i}", t, e, p, o, mt, task) for i, (t, e, p, o) in enumerate(rows)), duration)


def _check_duration(duration: float) -> None:
    _field(_finite(duration) and duration > 0, "duration", "must be a finite number of seconds > 0", duration)


def poisson(rates: Sequence[tuple[float, Sequence[float]]], duration: float, lengths: Lengths, seed: Seed) -> Trace:
    """WWW.Serve's generator: per node, exponential inter-arrivals at piecewise-constant rates.

    ``rates``: ``[(start_s, [rate per node]), ...]`` in requests/s, each step holding until
    the next (:func:`parse_rates`). WWW.Serve's version (b) over 750 s: ``[(0, [1/4, 1/20,
    1/20, 1/20]), (300, [1/20, 1/20, 1/20, 1/20]), (450, [1/20, 1/20, 1/20, 1/4])]``. At each
    step the process restarts at the new rate, exact for a Poisson process (memoryless).
    Each node draws arrivals and lengths from its own streams, so one node's rates never
    move another node's requests.
    """
    from p2pserve.sim.workload_parse import parse_rates  # the parser module builds on this one

    schedule = parse_rates(rates, "rates")
    _check_duration(duration)
    rows: list[tuple[float, int, int, int]] = []
    for node in range(len(schedule[0][1])):
        arrivals, sizes = derive(seed, "poisson", "arrivals", node), derive(seed, "poisson", "lengths", node)
        for i, (start, node_rates) in enumerate(schedule):
            end = min(schedule[i + 1][0] if i + 1 < len(schedule) else duration, duration)
            rate, t = node_rates[node], start
            while rate > 0 and t < end:
                t += arrivals.expovariate(rate)
                if t < end:
                    rows.append((t, node, *lengths.draw(sizes)))
    return _assemble(rows, lengths, duration)


def gamma_bursts(
    mean_rate: float, cv: float, duration: float, entries: int | Sequence[float], lengths: Lengths, seed: Seed
) -> Trace:
    """BurstGPT's arrival model: Gamma inter-arrivals, shape ``1/cv**2``, mean ``1/mean_rate``;
    each request goes to an entry node drawn by weight.

    ``cv`` 1 is Poisson, above 1 bursty (clusters, then long gaps), 0 a fixed period.
    ``entries``: a node count (uniform) or one weight per node (0: never an entry). The
    process starts at 0 with a full gap (not in equilibrium).
    """
    _field(_finite(mean_rate) and mean_rate > 0, "rate", "must be a finite rate > 0 (requests/s)", mean_rate)
    _field(_finite(cv) and cv >= 0, "cv", "must be a finite coefficient of variation >= 0", cv)
    _check_duration(duration)
    cumulative = _cumulative_weights(entries)
    arrivals, picks, sizes = (derive(seed, "gamma", label) for label in ("arrivals", "entries", "lengths"))
    shape, scale = (1.0 / cv**2, cv**2 / mean_rate) if cv > 0 else (0.0, 1.0 / mean_rate)
    rows: list[tuple[float, int, int, int]] = []
    t, total = 0.0, cumulative[-1]
    while True:
        t += arrivals.gammavariate(shape, scale) if shape else scale
        if t >= duration:
            return _assemble(rows, lengths, duration)
        # bisect_right skips a zero-weight node: its cumulative sum equals its predecessor's.
        rows.append((t, bisect.bisect_right(cumulative, picks.random() * total), *lengths.draw(sizes)))


def _cumulative_weights(entries: int | Sequence[float]) -> list[float]:
    if isinstance(entries, int) and not isinstance(entries, bool):
        _field(entries >= 1, "entries", "must be a node count >= 1 or a list of weights", entries)
        return [float(i + 1) for i in range(entries)]
    weights = list(entries) if isinstance(entries, Sequence) and not isinstance(entries, str) else []
    ok = bool(weights) and all(_finite(w) and w >= 0 for w in weights) and sum(weights) > 0
    _field(ok, "entries", "must be a node count >= 1 or weights >= 0 with a positive sum", entries)
    acc = 0.0
    return [acc := acc + w for w in weights]


def azure_like(
    duration: float,
    entries: int | Sequence[float],
    seed: Seed,
    *,
    trace: str = "conv",
    rate: float | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    task: str | None = None,
) -> Trace:
    """Arrivals and lengths shaped like Azure 2023 ``trace`` (``conv`` or ``code``):
    :func:`gamma_bursts` at its CV and rate (or ``rate``: WWW.Serve kept every 30th row of
    its trace, ``rate = 5.53 / 30`` here), lengths from its quantiles."""
    _field(trace in AZURE_TRACES, "trace", f"must be one of {sorted(AZURE_TRACES)}", trace)
    stats = AZURE_TRACES[trace]
    lengths = Lengths(Quantiles(stats.prompt), Quantiles(stats.output), max_tokens, task)
    return gamma_bursts(stats.rate if rate is None else rate, stats.cv, duration, entries, lengths, seed)


# --- node churn ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Churn:
    """Node ``node`` joins or leaves the network at virtual time ``time``."""

    time: float
    node: int
    action: Literal["join", "leave"]

    def __post_init__(self) -> None:
        _field(_finite(self.time) and self.time >= 0, "time", "must be a finite time >= 0", self.time)
        _field(_count(self.node, 0), "node", "must be a node index >= 0", self.node)
        _field(self.action in ("join", "leave"), "action", "must be 'join' or 'leave'", self.action)


def absent_at_start(churn: Iterable[Churn]) -> frozenset[int]:
    """Nodes whose first event is a join: not running when the run starts."""
    first: dict[int, str] = {}
    for event in sorted(churn, key=lambda c: c.time):
        first.setdefault(event.node, event.action)
    return frozenset(node for node, action in first.items() if action == "join")
