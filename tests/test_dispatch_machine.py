"""The request lifecycle as a table: every (phase, where, outcome) transition, the placement
decisions per policy, and the two lifecycle bugs found while simulating (a retry wait that
came out as 0.0, and always-offload never offering again after one refused round)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserve.backends.base import Load
from p2pserve.errors import LocalProtocolError
from p2pserve.policies import LocalModel, PolicyParams, load_policy
from p2pserve.serving.dispatch import (
    MIN_WAIT_S,
    TRANSITIONS,
    Fail,
    Offer,
    Phase,
    RequestLifecycle,
    Sleep,
    UseLocal,
    Where,
)
from p2pserve.serving.events import Outcome

IDLE = LocalModel("m", Load(running=0, source="inflight"), 0.6, 4)
BUSY = LocalModel("m", Load(running=4, queued=2, source="inflight"), 0.6, 4)
RNG = random.Random(0)


def lifecycle(policy: str = "default", *, has_local: bool = True, local_continues: bool = False,
              now: float = 0.0, **params: float) -> RequestLifecycle:
    p = PolicyParams(**params)  # type: ignore[arg-type]
    return RequestLifecycle("m", load_policy(policy, p), p, now, has_local=has_local, local_continues=local_continues)


def put(lc: RequestLifecycle, phase: Phase) -> RequestLifecycle:
    lc.phase = phase
    return lc


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("where", list(Where))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_phase_where_outcome(phase: Phase, where: Where, outcome: Outcome) -> None:
    lc = put(lifecycle(local_continues=True), phase)
    expected = TRANSITIONS.get((phase, where, outcome))
    if expected is None:
        with pytest.raises(LocalProtocolError):
            lc.ended(where, outcome)
        assert lc.phase is phase
        return
    assert lc.ended(where, outcome) is expected is lc.phase
    assert lc.local_failed == (where is Where.LOCAL and outcome is not Outcome.COMPLETED)


def test_continuing_without_local_continuation_fails_on_a_refused_round() -> None:
    lc = put(lifecycle(local_continues=False), Phase.CONTINUING)
    assert lc.ended(Where.REMOTE, Outcome.REFUSED) is Phase.FAILED


def test_continuation_rounds_are_bounded_and_fall_back_to_local() -> None:
    lc = put(lifecycle(local_continues=True, offer_fanout=2), Phase.CONTINUING)
    assert lc.decide(0, [IDLE], True, RNG) == Offer()
    lc.ended(Where.REMOTE, Outcome.REFUSED)
    assert lc.decide(0, [IDLE], True, RNG) == UseLocal(queued=True)  # the local backend continues
    lc.ended(Where.LOCAL, Outcome.FAILED)
    assert lc.decide(0, [IDLE], True, RNG) == Offer()
    lc.ended(Where.REMOTE, Outcome.FAILED)
    assert lc.decide(0, [IDLE], True, RNG) == Offer()
    lc.ended(Where.REMOTE, Outcome.FAILED)
    step = lc.decide(0, [IDLE], True, RNG)
    assert isinstance(step, Fail) and not step.no_capacity and lc.phase is Phase.FAILED
    with pytest.raises(LocalProtocolError):
        lc.decide(0, [IDLE], True, RNG)


def test_placement_follows_the_policy() -> None:
    assert lifecycle().decide(0, [IDLE], True, RNG) == UseLocal(queued=False)
    gw = lifecycle(has_local=False)
    assert gw.decide(0, [], True, RNG) == Offer()
    assert gw.decide(0.1, [], True, RNG) == Sleep(pytest.approx(0.4))  # one round per retry interval
    only = lifecycle(policy="local-only")
    assert only.decide(0, [BUSY], True, RNG) == UseLocal(queued=True)


def test_a_refused_round_falls_back_to_the_local_queue_then_local_failure_gives_up() -> None:
    lc = lifecycle(offload_frequency=1.0)
    assert lc.decide(0, [BUSY], True, RNG) == Offer()
    lc.ended(Where.REMOTE, Outcome.REFUSED)
    assert lc.decide(0.01, [BUSY], True, RNG) == UseLocal(queued=True)
    lc.ended(Where.LOCAL, Outcome.REFUSED)
    assert isinstance(lc.decide(0.02, [BUSY], False, RNG), Fail)  # local failed, nobody else


@settings(max_examples=500, deadline=None)
@given(last=st.floats(0, 1e6, allow_nan=False), gap=st.floats(0, 0.5, allow_nan=False),
       retry=st.sampled_from([0.5, 0.1, 0.3, 1.0 / 3]))
def test_a_retry_wait_is_never_zero(last: float, gap: float, retry: float) -> None:
    """Regression (found while simulating): ``now - last_round = 0.49999999999999956 < 0.5``
    yet ``last_round + 0.5 - now == 0.0``, so the wait came out as 0 and a virtual clock
    never advanced (a 20-node run livelocked in 5 of 6 hash seeds)."""
    lc = lifecycle(has_local=False, now=last, retry_interval_s=retry, max_wait_s=10.0)
    lc.last_round = last
    step = lc.decide(last + gap, [], True, RNG)
    assert isinstance(step, (Sleep, Offer))
    if isinstance(step, Sleep):
        assert step.delay >= MIN_WAIT_S


def test_the_exact_float_from_the_report() -> None:
    lc = lifecycle(has_local=False, retry_interval_s=0.5, max_wait_s=100.0)
    lc.last_round, now = 63.53820935630572, 64.03820935630571
    lc.offload_failed = True
    assert now - lc.last_round < 0.5 and lc.last_round + 0.5 - now == 0.0  # the trap
    step = lc.decide(now, [], True, RNG)
    assert isinstance(step, (Sleep, Offer)) and (not isinstance(step, Sleep) or step.delay >= MIN_WAIT_S)


def test_always_offload_keeps_offering_until_the_wait_budget_is_spent() -> None:
    """Regression (found while simulating): ``always-offload`` never offered again after one
    refused round; the request waited 30 s and failed (63 of 1,000 did)."""
    lc = lifecycle("always-offload", has_local=False, max_wait_s=30.0, retry_interval_s=0.5)
    now, offers = 0.0, 0
    while True:
        step = lc.decide(now, [], True, RNG)
        if isinstance(step, Offer):
            offers += 1
            lc.ended(Where.REMOTE, Outcome.REFUSED)
            now += 0.01
        elif isinstance(step, Sleep):
            now += step.delay
        else:
            assert isinstance(step, Fail) and step.no_capacity
            break
    assert offers >= 55 and 29.5 <= now <= 30.0


def test_waiting_never_runs_past_the_budget() -> None:
    lc = lifecycle(has_local=False, max_wait_s=1.0, retry_interval_s=0.4)
    now = 0.0
    while not isinstance(step := lc.decide(now, [], False, RNG), Fail):
        assert isinstance(step, Sleep)
        now += step.delay
        assert now <= 1.0


def test_a_local_backend_that_is_down_is_never_chosen() -> None:
    down = RequestLifecycle("m", load_policy("local-only", PolicyParams()), PolicyParams(), 0.0,
                            has_local=True, local_continues=True, local_down=True)
    assert down.local_failed
    step = down.decide(0, [IDLE], False, RNG)  # even a local-only policy: nobody else, so fail at once
    assert isinstance(step, Fail) and step.no_capacity
    routed = RequestLifecycle("m", load_policy("default", PolicyParams()), PolicyParams(), 0.0,
                              has_local=True, local_continues=False, local_down=True)
    assert routed.decide(0, [IDLE], True, RNG) == Offer()  # peers take it
    gw = RequestLifecycle("m", load_policy("default", PolicyParams()), PolicyParams(), 0.0,
                          has_local=False, local_continues=False, local_down=True)
    assert not gw.local_failed  # no local model: "down" means nothing
