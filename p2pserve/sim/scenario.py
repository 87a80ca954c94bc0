"""A simulator scenario: the YAML a researcher writes (``configs/sim/*.yaml``), checked and
turned into nodes, a trace and a schedule. Pure apart from reading the file.

Format (every key optional unless marked; unknown keys are errors naming their path)::

    name: fig5_models                 # default: the file's stem
    description: ...
    seed: 1
    model: qwen3                      # the model name every serving node advertises
    strategies: [single, centralized, decentralized]   # also: jsq
    drain_s: 900                      # after the last arrival, how long requests may finish
    sample_s: 5                       # how often node series (load, credit) are sampled
    slo: {thresholds: [100, 490, 10], ttft_s: 10, tpot_s: 0.2}   # [first, last, step], s
    network: {latency_s: 0.02, jitter_s: 0.002}
    defaults: {stake: 10, price_per_1k: 0.1, duel_rate: 0, judge: false, policy: {...}}
    nodes:                            # required: groups of identical nodes, in index order
      - {count: 2, profile: qwen3-8b/a100-80gb, class: qwen3-8b, stake: 20, policy: {accept_frequency: 0.5}}
      - {count: 1, profile: null}     # a gateway: serves nothing
    workload: ...                     # required: p2pserve.sim.workload_parse formats
    churn: [{time: 120, node: 3, action: leave}]
    classes: {qwen3-8b: 0.57}         # answer quality: win rate against the field, per class
    judging: {accuracy: 0.9, position_bias: 0.0, judges: 1}
    sweep: {param: offload_frequency, values: [0, 0.5, 1]}   # one decentralized run per value
                                      # of a policy knob, set on every node (labelled
                                      # ``decentralized@offload_frequency=0.5``)

``policy`` holds the node's :class:`~p2pserve.policies.PolicyParams` knobs
(``offload_frequency``, ``accept_frequency``, ``queue_frequency``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2pserve.errors import ConfigError
from p2pserve.policies import PolicyParams
from p2pserve.sim.metrics import DEFAULT_THRESHOLDS
from p2pserve.sim.profiles import load_profile
from p2pserve.sim.strategies import STRATEGIES
from p2pserve.sim.workload import Churn, Trace, absent_at_start
from p2pserve.sim.workload_parse import parse_churn, parse_workload

__all__ = ["NodeSpec", "Scenario", "load_scenario", "parse_scenario"]

_TOP = {"name", "description", "seed", "model", "strategies", "drain_s", "sample_s", "slo", "network", "defaults",
        "nodes", "workload", "churn", "classes", "judging", "sweep"}
_NODE = {"count", "profile", "class", "stake", "price_per_1k", "duel_rate", "judge", "policy"}
_POLICY = {f.name for f in dataclasses.fields(PolicyParams)}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the scenario."""

    profile: str | None
    """A profile name (``qwen3-8b/a100-80gb``) or path; None for a gateway."""
    cls: str
    """Its answer-quality class (default: the profile's model)."""
    stake: float = 10.0
    price_per_1k: float = 0.1
    duel_rate: float = 0.0
    judge: bool = False
    policy: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    seed: int
    model: str
    strategies: tuple[str, ...]
    nodes: tuple[NodeSpec, ...]
    trace: Trace
    churn: tuple[Churn, ...]
    absent: frozenset[int]
    """Nodes that join later (their first churn event is a join)."""
    drain_s: float
    sample_s: float
    thresholds: tuple[float, ...]
    ttft_slo: float
    tpot_slo: float
    latency_s: float
    jitter_s: float
    classes: Mapping[str, float]
    judge_accuracy: float
    position_bias: float
    duel_judges: int
    sweep: tuple[tuple[str, Scenario], ...] = ()
    """Labelled variants (a policy knob swept over values), each run as ``decentralized``."""

    @property
    def duration(self) -> float:
        return self.trace.duration


def load_scenario(path: Path, seed: int | None = None) -> tuple[Scenario, dict[str, Any]]:
    """The scenario in ``path`` (and its raw mapping); ConfigError naming the file and key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a scenario is a mapping")
    if seed is not None:
        raw["seed"] = seed
    try:
        return parse_scenario(raw, path.stem), raw
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _get(m: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any, path: str = "") -> Any:
    value = m.get(key, default)
    if value is not None and not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{path}{key}: expected {getattr(kind, '__name__', kind)} (got {value!r})")
    return value


def _unknown(m: Mapping[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(m) - allowed)
    if extra:
        raise ConfigError(f"{path}{extra[0]}: unknown key (known: {', '.join(sorted(allowed))})")


def parse_scenario(raw: Mapping[str, Any], default_name: str = "scenario") -> Scenario:
    """Check ``raw`` and build the scenario (the trace is drawn from ``seed``)."""
    _unknown(raw, _TOP, "")
    seed = _get(raw, "seed", int, 1)
    strategies = tuple(_get(raw, "strategies", list, ["single", "centralized", "decentralized"]))
    for i, s in enumerate(strategies):
        if s not in STRATEGIES:
            raise ConfigError(f"strategies[{i}]: unknown strategy {s!r} (known: {', '.join(STRATEGIES)})")
    nodes = _nodes(raw.get("nodes"), _get(raw, "defaults", dict, {}))
    trace = parse_workload(raw.get("workload"), seed)
    if trace.requests and max(r.entry for r in trace.requests) >= len(nodes):
        raise ConfigError(f"workload: requests enter at node {max(r.entry for r in trace.requests)}, but there are {len(nodes)} nodes")
    churn = parse_churn(raw["churn"], nodes=len(nodes)) if raw.get("churn") else ()
    slo = _get(raw, "slo", dict, {})
    _unknown(slo, {"thresholds", "ttft_s", "tpot_s"}, "slo.")
    net = _get(raw, "network", dict, {})
    _unknown(net, {"latency_s", "jitter_s"}, "network.")
    judging = _get(raw, "judging", dict, {})
    _unknown(judging, {"accuracy", "position_bias", "judges"}, "judging.")
    classes = _get(raw, "classes", dict, {})
    for k, v in classes.items():
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ConfigError(f"classes.{k}: a win probability within [0, 1] (got {v!r})")
    scn = Scenario(
        name=_get(raw, "name", str, default_name), description=_get(raw, "description", str, ""), seed=seed,
        model=_get(raw, "model", str, "sim-model"), strategies=strategies, nodes=nodes, trace=trace, churn=churn,
        absent=absent_at_start(churn), drain_s=float(_get(raw, "drain_s", (int, float), 900.0)),
        sample_s=float(_get(raw, "sample_s", (int, float), 5.0)), thresholds=_thresholds(slo.get("thresholds")),
        ttft_slo=float(_get(slo, "ttft_s", (int, float), 10.0, "slo.")),
        tpot_slo=float(_get(slo, "tpot_s", (int, float), 0.2, "slo.")),
        latency_s=float(_get(net, "latency_s", (int, float), 0.02, "network.")),
        jitter_s=float(_get(net, "jitter_s", (int, float), 0.002, "network.")),
        classes=dict(classes), judge_accuracy=float(_get(judging, "accuracy", (int, float), 0.9, "judging.")),
        position_bias=float(_get(judging, "position_bias", (int, float), 0.0, "judging.")),
        duel_judges=int(_get(judging, "judges", int, 1, "judging.")),
    )
    return dataclasses.replace(scn, sweep=_sweep(raw, default_name)) if raw.get("sweep") else scn


def _sweep(raw: Mapping[str, Any], default_name: str) -> tuple[tuple[str, Scenario], ...]:
    sweep = _get(raw, "sweep", dict, {})
    _unknown(sweep, {"param", "values"}, "sweep.")
    param, values = sweep.get("param"), sweep.get("values")
    if param not in _POLICY:
        raise ConfigError(f"sweep.param: a policy knob ({', '.join(sorted(_POLICY))}) (got {param!r})")
    if not isinstance(values, list) or not values:
        raise ConfigError("sweep.values: a non-empty list")
    out = []
    for v in values:
        defaults = dict(raw.get("defaults") or {})
        defaults["policy"] = {**defaults.get("policy", {}), param: v}
        nodes = [{**g, "policy": {**g.get("policy", {}), param: v}} for g in raw["nodes"]]
        variant = {k: x for k, x in raw.items() if k != "sweep"} | {"defaults": defaults, "nodes": nodes}
        out.append((f"decentralized@{param}={v}", parse_scenario(variant, default_name)))
    return tuple(out)


def _thresholds(value: object) -> tuple[float, ...]:
    if value is None:
        return DEFAULT_THRESHOLDS
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise ConfigError(f"slo.thresholds: [first, last, step] in seconds (got {value!r})")
    first, last, step = (float(v) for v in value)
    if step <= 0 or last < first:
        raise ConfigError(f"slo.thresholds: needs first <= last and step > 0 (got {value!r})")
    n = int((last - first) / step + 1e-9) + 1
    return tuple(first + i * step for i in range(n))


def _nodes(groups: object, defaults: Mapping[str, Any]) -> tuple[NodeSpec, ...]:
    if not isinstance(groups, list) or not groups:
        raise ConfigError("nodes: a non-empty list of node groups")
    _unknown(defaults, _NODE - {"count", "profile", "class"}, "defaults.")
    out: list[NodeSpec] = []
    for i, g in enumerate(groups):
        path = f"nodes[{i}]."
        if not isinstance(g, dict):
            raise ConfigError(f"nodes[{i}]: a mapping")
        _unknown(g, _NODE, path)
        merged = {**defaults, **g}
        count = _get(merged, "count", int, 1, path)
        profile = _get(merged, "profile", str, None, path)
        policy = {**defaults.get("policy", {}), **g.get("policy", {})}
        _unknown(policy, _POLICY, f"{path}policy.")
        spec = NodeSpec(
            profile=profile, cls=_get(merged, "class", str, (profile or "gateway").split("/")[0], path),
            stake=float(_get(merged, "stake", (int, float), 10.0, path)),
            price_per_1k=float(_get(merged, "price_per_1k", (int, float), 0.1, path)),
            duel_rate=float(_get(merged, "duel_rate", (int, float), 0.0, path)),
            judge=bool(_get(merged, "judge", bool, False, path)), policy=policy,
        )
        if count < 1:
            raise ConfigError(f"{path}count: at least 1 (got {count})")
        if profile is not None:
            try:
                load_profile(profile)
            except ConfigError as exc:
                raise ConfigError(f"{path}profile: {exc}") from exc
        out.extend([spec] * count)
    return tuple(out)


def node_policy(spec: NodeSpec) -> PolicyParams:
    """The node's policy knobs (checked by PolicyParams itself)."""
    return PolicyParams(**spec.policy)


def strategy_list(s: Sequence[str]) -> tuple[str, ...]:
    """Strategies named on the command line (comma-separated), checked."""
    for name in s:
        if name not in STRATEGIES:
            raise ConfigError(f"--strategies: unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return tuple(s)
