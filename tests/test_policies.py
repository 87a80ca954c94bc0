"""Policy decision tables: idle test per load source, the requester cascade, the accept rule."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from p2pserve.backends.base import Load
from p2pserve.errors import ConfigError
from p2pserve.policies import (
    POLICIES,
    AlwaysOffloadPolicy,
    DefaultPolicy,
    DispatchParams,
    LocalModel,
    LocalOnlyPolicy,
    OfferContext,
    Offload,
    Policy,
    PolicyParams,
    Queue,
    RequestContext,
    RunLocal,
    Wait,
    is_idle,
    least_queued,
    load_policy,
)

IDLE = Load(running=0, queued=0, token_usage=0.1, source="metrics")
BUSY = Load(running=8, queued=3, token_usage=0.9, source="metrics")


def model(name: str = "m", load: Load = IDLE, *, target: float = 0.6, conc: int = 4, inflight: int = 0) -> LocalModel:
    return LocalModel(name, load, target, conc, inflight)


@pytest.mark.parametrize(
    ("load", "target", "conc", "inflight", "idle"),
    [
        (Load(0, 0, 0.59, "metrics"), 0.6, 4, 0, True),
        (Load(0, 0, 0.6, "metrics"), 0.6, 4, 0, False),
        (Load(9, 9, 0.1, "metrics"), 0.6, 4, 0, True),  # token usage decides when known
        (Load(0, 0, 0.1, "metrics"), 0.6, 4, 4, False),  # our own burst fills it before metrics say so
        (Load(0, 0, 0.1, "metrics"), -1.0, 4, 0, False),  # a pure dispatcher never runs locally
        (Load(0, 0, 0.1, "metrics"), 0.0, 4, 0, False),
        (Load(3, 0, None, "metrics"), 0.6, 4, 0, True),
        (Load(4, 0, None, "metrics"), 0.6, 4, 0, False),
        (Load(1, 1, None, "metrics"), 0.6, 4, 0, False),
        (Load(0, 0, None, "inflight"), 0.6, 1, 0, True),
        (Load(1, 0, None, "inflight"), 0.6, 1, 0, False),
        (Load(0, 1, None, "inflight"), 0.6, 2, 0, False),
        (Load(0, 0, None, "unknown"), 0.6, 4, 0, False),  # unreadable is never idle
        (Load(0, 0, 0.0, "unknown"), 0.6, 4, 0, False),
    ],
)
def test_idle_table(load: Load, target: float, conc: int, inflight: int, idle: bool) -> None:
    assert is_idle(model(load=load, target=target, conc=conc, inflight=inflight)) is idle


def test_least_queued_prefers_known_loads() -> None:
    a = model("a", Load(0, 5, None, "inflight"))
    b = model("b", Load(0, 0, None, "unknown"))
    c = model("c", Load(0, 2, None, "metrics"))
    assert least_queued([a, b, c]).name == "c"
    assert least_queued([b]).name == "b"
    with pytest.raises(ValueError):
        least_queued([])


def _frequencies(policy: Policy, ctx: RequestContext, local: list[LocalModel], n: int = 10_000) -> Counter[str]:
    rng = random.Random(17)
    return Counter(type(policy.decide(ctx, local, 0.0, rng)).__name__ for _ in range(n))


def test_default_cascade() -> None:
    p = DefaultPolicy(PolicyParams())
    ctx = RequestContext("m", has_candidates=True)
    rng = random.Random(0)
    assert p.decide(ctx, [model(load=BUSY), model("m2")], 0.0, rng) == RunLocal("m2")
    # busy: offload 0.8; else queue 0.2 of the rest (0.04); else wait (0.16)
    freq = _frequencies(p, ctx, [model(load=BUSY)])
    assert abs(freq["Offload"] / 10_000 - 0.8) < 0.02
    assert abs(freq["Queue"] / 10_000 - 0.04) < 0.01
    assert abs(freq["Wait"] / 10_000 - 0.16) < 0.015
    # no candidates: queue 0.2, else wait
    freq = _frequencies(p, RequestContext("m", has_candidates=False), [model(load=BUSY)])
    assert set(freq) == {"Queue", "Wait"}
    assert abs(freq["Queue"] / 10_000 - 0.2) < 0.02


def test_default_falls_back_to_local_after_failed_offload() -> None:
    p = DefaultPolicy(PolicyParams())
    busy = [model("a", Load(1, 4, 0.9, "metrics")), model("b", Load(1, 1, 0.9, "metrics"))]
    ctx = RequestContext("m", has_candidates=True, offload_failed=True)
    assert p.decide(ctx, busy, 0.0, random.Random(0)) == Queue("b")


def test_gateway_always_offloads_or_waits() -> None:
    p = DefaultPolicy(PolicyParams(offload_frequency=0.0, retry_interval_s=0.25))
    rng = random.Random(0)
    assert all(p.decide(RequestContext("m", True), [], 0.0, rng) == Offload() for _ in range(100))
    assert p.decide(RequestContext("m", False), [], 0.0, rng) == Wait(0.25)
    assert p.decide(RequestContext("m", True, offload_failed=True), [], 0.0, rng) == Offload()


def test_accept_rule() -> None:
    p = DefaultPolicy(PolicyParams(accept_frequency=0.8))
    offer = OfferContext("m", "requester")
    rng = random.Random(1)
    n = 10_000
    accepted = sum(p.accept(offer, [model()], 0, rng) for _ in range(n))
    assert abs(accepted / n - 0.8) < 0.02
    assert not any(p.accept(offer, [model()], 1, rng) for _ in range(100))  # own users first
    assert not any(p.accept(offer, [model(load=BUSY)], 0, rng) for _ in range(100))
    assert not any(p.accept(offer, [model(load=Load())], 0, rng) for _ in range(100))  # unknown load
    assert not any(p.accept(offer, [], 0, rng) for _ in range(100))
    assert p.accepting(model(), 0)
    assert not p.accepting(model(), 2)
    assert not p.accepting(model(load=BUSY), 0)
    assert not DefaultPolicy(PolicyParams(accept_frequency=0.0)).accepting(model(), 0)


def test_local_only_and_always_offload() -> None:
    lo = LocalOnlyPolicy(PolicyParams())
    rng = random.Random(0)
    ctx = RequestContext("m", has_candidates=True)
    assert lo.decide(ctx, [model()], 0.0, rng) == RunLocal("m")
    assert lo.decide(ctx, [model(load=BUSY)], 0.0, rng) == Queue("m")
    assert isinstance(lo.decide(ctx, [], 0.0, rng), Wait)
    assert not lo.accept(OfferContext("m", "x"), [model()], 0, rng)
    ao = AlwaysOffloadPolicy(PolicyParams())
    assert ao.decide(ctx, [model()], 0.0, rng) == Offload()
    assert ao.decide(RequestContext("m", True, offload_failed=True), [model()], 0.0, rng) == Queue("m")
    assert isinstance(ao.decide(RequestContext("m", False), [], 0.0, rng), Wait)


class PluggedPolicy(LocalOnlyPolicy):
    """A provider's own policy, loaded by dotted path."""


def not_a_policy(params: PolicyParams) -> object:
    return object()


def test_load_policy_by_name_and_path() -> None:
    params = PolicyParams()
    for name in POLICIES:
        assert isinstance(load_policy(name, params), Policy)
    plugged = load_policy("tests.test_policies:PluggedPolicy", params)
    assert isinstance(plugged, PluggedPolicy)
    with pytest.raises(ConfigError, match="unknown policy"):
        load_policy("nope", params)
    with pytest.raises(ConfigError, match="cannot load"):
        load_policy("tests.test_policies:Missing", params)
    with pytest.raises(ConfigError, match="cannot load"):
        load_policy("no_such_module_xyz:Thing", params)
    with pytest.raises(ConfigError, match="cannot build"):
        load_policy("tests.test_policies:OfferContext", params)
    with pytest.raises(ConfigError, match="does not provide"):
        load_policy("tests.test_policies:not_a_policy", params)


@pytest.mark.parametrize(
    "kwargs",
    [{"offload_frequency": 1.5}, {"accept_frequency": -0.1}, {"offer_fanout": 0}, {"retry_interval_s": 0}, {"max_wait_s": -1}],
)
def test_bad_params(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PolicyParams(**kwargs)  # type: ignore[arg-type]


def test_dispatch_params() -> None:
    assert DispatchParams().target_token_usage == 0.6
    with pytest.raises(ConfigError):
        DispatchParams(max_concurrency=0)
