"""Scenario mappings (the ``workload:`` and ``churn:`` sections of a simulator scenario) into
the traces and schedules of :mod:`p2pserve.sim.workload`. Pure.

Every error is a :class:`~p2pserve.errors.ConfigError` naming the key path
(``workload[1].output.sigma: must be >= 0 (got -1.0)``), and unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from p2pserve.errors import ConfigError
from p2pserve.rng import derive
from p2pserve.sim.workload import (
    _Z90,
    AZURE_TRACES,
    DEFAULT_MAX_TOKENS,
    Churn,
    Fixed,
    LengthDist,
    Lengths,
    LogNormal,
    Quantiles,
    Reasoning,
    Schedule,
    Seed,
    Trace,
    Uniform,
    _finite,
    azure_like,
    gamma_bursts,
    merge,
    poisson,
)

__all__ = ["parse_churn", "parse_dist", "parse_lengths", "parse_rates", "parse_workload"]


# --- parsing scenario mappings -------------------------------------------------------------

_MISSING: Any = object()
_LENGTH_KEYS = frozenset({"prompt", "output", "max_tokens", "task"})
_DISTS: Mapping[str, type] = {"fixed": Fixed, "lognormal": LogNormal, "quantiles": Quantiles, "reasoning": Reasoning, "uniform": Uniform}
_PRESETS = {f"azure-{t.name}-{part}": getattr(t, part) for t in AZURE_TRACES.values() for part in ("prompt", "output")}


def _invalid(path: str, reason: str, value: object) -> NoReturn:
    raise ConfigError(f"{path}: {reason} (got {value!r})")


def _mapping(data: object, path: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        _invalid(path, "must be a mapping", data)
    known = set(allowed)
    extra = sorted(str(k) for k in data if k not in known)
    if extra:
        raise ConfigError(f"{path}.{extra[0]}: unknown key (known: {', '.join(sorted(known))})")
    return data


def _list(data: object, path: str, what: str) -> Sequence[Any]:
    if isinstance(data, str | bytes) or not isinstance(data, Sequence) or not data:
        _invalid(path, f"must be a non-empty list of {what}", data)
    return data


def _get(m: Mapping[str, Any], key: str, path: str, kind: type, default: Any = _MISSING) -> Any:
    """``m[key]`` as ``kind`` (int, float or str; an integral float passes as int)."""
    v = m.get(key)
    if v is None:
        if default is _MISSING:
            raise ConfigError(f"{path}.{key}: missing")
        return default
    if kind is float and _finite(v):
        return float(v)
    if kind is int and isinstance(v, float) and v.is_integer():
        return int(v)
    if (kind is int and isinstance(v, int) and not isinstance(v, bool)) or (kind is str and isinstance(v, str) and v):
        return v
    _invalid(f"{path}.{key}", {int: "must be an integer", float: "must be a finite number"}.get(kind, "must be a non-empty string"), v)


def _build(path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(...)``, its ConfigError (which starts with a field name) prefixed with ``path``."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path}.{exc}") from None


def _fields(cls: type, m: Mapping[str, Any], path: str, **given: Any) -> Any:
    """``cls`` built from ``m``: each init field not in ``given`` read as its annotation's
    scalar type (int, float, str), defaults where ``m`` lacks it."""
    for f in dataclasses.fields(cls):
        if f.init and f.name not in given:
            kind = {"int": int, "flo": float}.get(str(f.type)[:3], str)
            default = _MISSING if f.default is dataclasses.MISSING else f.default
            given[f.name] = _get(m, f.name, path, kind, default)
    return _build(path, cls, **given)


def parse_dist(data: object, path: str) -> LengthDist:
    """A length distribution from a mapping (a bare integer is :class:`Fixed`):
    ``{dist: fixed, value}``, ``{dist: uniform, low, high}``, ``{dist: lognormal, median,
    sigma, [min], [max]}`` (or ``mean`` + ``sigma``, or ``p50`` + ``p90``), ``{dist:
    reasoning, [median], [sigma], [loop], [min], [max]}``, ``{dist: quantiles, points: [[q,
    tokens], ...]}``, or a preset: ``{dist: azure-conv-prompt}`` (``-output``, ``azure-code-*``)."""
    if isinstance(data, int) and not isinstance(data, bool):
        return _build(path, Fixed, data)  # type: ignore[no-any-return]
    kind = str(data.get("dist")) if isinstance(data, Mapping) else None
    if kind in _PRESETS:
        _mapping(data, path, {"dist"})
        return Quantiles(_PRESETS[kind])
    cls = _DISTS.get(kind or "")
    if cls is None:
        _invalid(f"{path}.dist", f"must be one of {sorted(_DISTS) + sorted(_PRESETS)}", kind)
    keys = {"mean", "p50", "p90"} if cls is LogNormal else set()
    m = _mapping(data, path, {"dist", *keys, *(f.name for f in dataclasses.fields(cls) if f.init)})
    if cls is Quantiles:
        return _build(path, Quantiles, _points(m.get("points"), f"{path}.points"))  # type: ignore[no-any-return]
    if cls is LogNormal:
        median, sigma = _lognormal_shape(m, path)
        return _fields(LogNormal, m, path, median=median, sigma=sigma)  # type: ignore[no-any-return]
    return _fields(cls, m, path)  # type: ignore[no-any-return]


def _lognormal_shape(m: Mapping[str, Any], path: str) -> tuple[float, float]:
    """(median, sigma) from median + sigma, mean + sigma (median = mean / e^(sigma^2 / 2)),
    or p50 + p90 (sigma = ln(p90 / p50) / z90)."""
    given = sorted(k for k in ("mean", "median", "p50", "p90", "sigma") if k in m)
    if given in (["median", "sigma"], ["mean", "sigma"]):
        center, sigma = _get(m, given[0], path, float), _get(m, "sigma", path, float)
        if center <= 0:
            _invalid(f"{path}.{given[0]}", "must be > 0", center)
        return (center / math.exp(sigma * sigma / 2) if given[0] == "mean" else center), sigma
    if given == ["p50", "p90"]:
        p50, p90 = _get(m, "p50", path, float), _get(m, "p90", path, float)
        if not 0 < p50 < p90:
            _invalid(f"{path}.p90", "needs 0 < p50 < p90", (p50, p90))
        return p50, math.log(p90 / p50) / _Z90
    raise ConfigError(f"{path}: give median and sigma, mean and sigma, or p50 and p90 (got {', '.join(given) or 'none'})")


def _points(data: object, path: str) -> tuple[tuple[float, int], ...]:
    """Quantile points from ``[[q, tokens], ...]`` or ``{q: tokens, ...}``."""
    items = list(data.items()) if isinstance(data, Mapping) else _list(data, path, "[quantile, tokens] pairs")
    points = []
    for i, item in enumerate(items):
        if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 2:
            _invalid(f"{path}[{i}]", "must be a [quantile, tokens] pair", item)
        pair = {"q": item[0], "tokens": item[1]}
        points.append((_get(pair, "q", f"{path}[{i}]", float), _get(pair, "tokens", f"{path}[{i}]", int)))
    return tuple(points)


def parse_lengths(data: object, path: str) -> Lengths:
    """``{prompt: <dist>, output: <dist>, [max_tokens: 8192], [task: str]}`` (:func:`parse_dist`)."""
    return _lengths_from(_mapping(data, path, _LENGTH_KEYS), path)


def _lengths_from(m: Mapping[str, Any], path: str) -> Lengths:
    missing = [k for k in ("prompt", "output") if m.get(k) is None]
    if missing:
        raise ConfigError(f"{path}.{missing[0]}: missing")
    dists = {k: parse_dist(m[k], f"{path}.{k}") for k in ("prompt", "output")}
    return _fields(Lengths, m, path, **dists)  # type: ignore[no-any-return]


def parse_rates(data: object, path: str) -> Schedule:
    """A rate schedule from ``[[start_s, [rate per node]], ...]`` or ``[{at: start_s, rates:
    [...]}, ...]`` (requests/s): starts rise strictly from 0, every step gives every node a
    rate (the node count is the lists' length)."""
    steps: list[tuple[float, tuple[float, ...]]] = []
    for i, item in enumerate(_list(data, path, "[start_s, [rate per node]] steps")):
        p = f"{path}[{i}]"
        start: Any
        if isinstance(item, Mapping):
            m = _mapping(item, p, ("at", "rates"))
            start, rates, names = m.get("at"), m.get("rates"), (f"{p}.at", f"{p}.rates")
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 2:
            start, rates, names = item[0], item[1], (f"{p}[0]", f"{p}[1]")
        else:
            _invalid(p, "must be [start_s, [rate per node]] or {at: start_s, rates: [...]}", item)
        if not _finite(start) or (start <= steps[-1][0] if steps else start != 0):
            _invalid(names[0], "starts must begin at 0 and rise strictly", start)
        rates = _list(rates, names[1], "rates (requests/s), one per node")
        if not all(_finite(r) and r >= 0 for r in rates) or (steps and len(rates) != len(steps[0][1])):
            _invalid(names[1], f"must be {len(steps[0][1]) if steps else 'one'} finite rate(s) >= 0 per node", rates)
        steps.append((float(start), tuple(float(r) for r in rates)))
    return tuple(steps)


def parse_churn(data: object, path: str = "churn", nodes: int | None = None) -> tuple[Churn, ...]:
    """Join/leave events from ``[{time: 120, node: 4, action: leave}, ...]`` or ``[[120, 4,
    leave], ...]``, sorted by time (ties keep their order). Each node's events must
    alternate; a node whose first event is a join starts absent (:func:`absent_at_start`).
    With ``nodes``, every index must be below it. ``None`` is no churn."""
    events: list[tuple[Churn, str]] = []
    for i, item in enumerate([] if data is None else _list(data, path, "{time, node, action} events")):
        p = f"{path}[{i}]"
        if isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 3:
            item = dict(zip(("time", "node", "action"), item, strict=True))
        event = _fields(Churn, _mapping(item, p, ("time", "node", "action")), p)
        if nodes is not None and event.node >= nodes:
            _invalid(f"{p}.node", f"must be below the node count {nodes}", event.node)
        events.append((event, p))
    events.sort(key=lambda e: e[0].time)
    last: dict[int, str] = {}
    for event, p in events:
        if last.get(event.node) == event.action:
            _invalid(f"{p}.action", f"node {event.node} would {event.action} twice in a row", event.action)
        last[event.node] = event.action
    return tuple(e for e, _ in events)


def parse_workload(data: object, seed: Seed, path: str = "workload") -> Trace:
    """A scenario's ``workload`` (one mapping or a list of them), merged and rekeyed.

    Each item: ``kind`` (``poisson``, ``gamma``, ``azure``), ``duration`` (s), optional
    ``start`` (s, shifts it). ``poisson``: ``rates`` (:func:`parse_rates`) and lengths keys;
    ``gamma``: ``rate``, ``cv``, ``entries`` (a count or weights; default 1) and lengths keys;
    ``azure``: optional ``trace`` (conv), ``rate``, ``entries``, ``max_tokens``, ``task``.
    Lengths keys: ``prompt``, ``output`` (:func:`parse_dist`), optional ``max_tokens``, ``task``.
    Item ``i`` draws from ``derive(seed, "workload", i)``: adding an item leaves the others be.
    """
    items = [data] if isinstance(data, Mapping) else _list(data, path, "workload mappings")
    traces = []
    for i, item in enumerate(items):
        p = path if isinstance(data, Mapping) else f"{path}[{i}]"
        traces.append(_workload_item(item, derive(seed, "workload", i).getrandbits(128), p))
    return merge(*traces)


def _workload_item(item: object, seed: int, p: str) -> Trace:
    kind = item.get("kind") if isinstance(item, Mapping) else None
    keys = {"poisson": {"rates", *_LENGTH_KEYS}, "gamma": {"rate", "cv", "entries", *_LENGTH_KEYS},
            "azure": {"trace", "rate", "entries", "max_tokens", "task"}}  # fmt: skip
    if kind not in keys:
        _invalid(f"{p}.kind", f"must be one of {sorted(keys)}", kind)
    m = _mapping(item, p, {"kind", "duration", "start", *keys[kind]})
    duration, start = _get(m, "duration", p, float), _get(m, "start", p, float, 0.0)
    if start < 0:
        _invalid(f"{p}.start", "must be >= 0", start)
    if kind == "poisson":
        trace = _build(p, poisson, parse_rates(m.get("rates"), f"{p}.rates"), duration, _lengths_from(m, p), seed)
    elif kind == "gamma":
        rate, cv = _get(m, "rate", p, float), _get(m, "cv", p, float)
        trace = _build(p, gamma_bursts, rate, cv, duration, m.get("entries", 1), _lengths_from(m, p), seed)
    else:
        options = {"trace": _get(m, "trace", p, str, "conv"), "rate": _get(m, "rate", p, float, None),
                   "max_tokens": _get(m, "max_tokens", p, int, DEFAULT_MAX_TOKENS), "task": _get(m, "task", p, str, None)}  # fmt: skip
        trace = _build(p, azure_like, duration, m.get("entries", 1), seed, **options)
    return trace.shift(start) if start else trace  # type: ignore[no-any-return]
