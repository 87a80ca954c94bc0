"""The duel machine over every (state, input) pair, and its counting of judges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserve.duel.machine import TERMINAL, TRANSITIONS, Deadlines, DuelMachine, Input, State
from p2pserve.errors import LocalProtocolError

D = Deadlines(shadow_s=10, ordering_s=1, judging_s=5)


def machine_in(state: State, pending: int = 2) -> DuelMachine:
    """A machine driven into ``state`` the ordinary way."""
    m = DuelMachine(0.0, D)
    path = {
        State.START: [],
        State.SHADOW: [lambda: m.shadow_started(0)],
        State.ORDERING: [lambda: m.shadow_started(0), lambda: m.shadow_done(1)],
        State.JUDGING: [lambda: m.shadow_started(0), lambda: m.shadow_done(1), lambda: m.judges_asked(1, pending)],
        State.SETTLED: [lambda: m.shadow_started(0), lambda: m.shadow_done(1), lambda: m.judges_asked(1, 1), lambda: m.verdict(2)],
        State.ABANDONED: [lambda: m.no_executor(0)],
    }[state]
    for step in path:
        step()
    assert m.state is state
    return m


def feed(m: DuelMachine, inp: Input, now: float) -> State:
    return {
        Input.SHADOW_STARTED: lambda: m.shadow_started(now),
        Input.NO_EXECUTOR: lambda: m.no_executor(now),
        Input.SHADOW_DONE: lambda: m.shadow_done(now),
        Input.SHADOW_FAILED: lambda: m.shadow_failed(now, "broke"),
        Input.JUDGES_ASKED: lambda: m.judges_asked(now, 2),
        Input.NO_JUDGE: lambda: m.no_judge(now),
        Input.VERDICT: lambda: m.verdict(now),
        Input.JUDGE_FAILED: lambda: m.judge_failed(now, "refused"),
        Input.TIMEOUT: lambda: m.timeout(now),
        Input.CANCEL: lambda: m.cancel(now),
    }[inp]()


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("inp", list(Input))
def test_every_state_input_pair(state: State, inp: Input) -> None:
    m = machine_in(state, pending=1)
    now = 1000.0  # past every deadline
    target = TRANSITIONS.get((state, inp))
    if target is None or (inp is Input.TIMEOUT and m.deadline is None):
        with pytest.raises(LocalProtocolError):
            feed(m, inp, now)
        assert m.state is state  # misuse changes nothing
        return
    got = feed(m, inp, now)
    if isinstance(target, State):
        assert got is target
    else:  # counted in JUDGING with one judge pending: the last answer ends the duel
        assert got is (State.SETTLED if inp is Input.VERDICT else State.ABANDONED)
    assert (m.deadline is None) == (got in TERMINAL)


def test_terminal_states_take_no_input() -> None:
    for state in TERMINAL:
        for inp in Input:
            assert (state, inp) not in TRANSITIONS


def test_the_duel_waits_for_every_judge_and_settles_on_any_verdict() -> None:
    m = machine_in(State.JUDGING, pending=3)
    deadline = m.deadline
    assert m.judge_failed(2, "refused") is State.JUDGING and m.deadline == deadline
    assert m.verdict(3) is State.JUDGING
    assert m.judge_failed(4, "gone") is State.SETTLED and m.verdicts == 1


def test_no_verdict_at_all_abandons() -> None:
    m = machine_in(State.JUDGING, pending=2)
    m.judge_failed(2, "refused")
    assert m.judge_failed(3, "gone") is State.ABANDONED


def test_a_timeout_ends_judging_with_what_came() -> None:
    m = machine_in(State.JUDGING, pending=2)
    m.verdict(2)
    assert m.deadline == 1 + D.judging_s
    with pytest.raises(LocalProtocolError):
        m.timeout(3)  # not due yet
    assert m.timeout(6) is State.SETTLED


def test_every_live_state_has_a_deadline_but_start() -> None:
    assert machine_in(State.SHADOW).deadline == 0 + D.shadow_s
    assert machine_in(State.ORDERING).deadline == 1 + D.ordering_s
    assert machine_in(State.START).deadline is None


def test_judges_asked_needs_a_judge() -> None:
    m = machine_in(State.ORDERING)
    with pytest.raises(LocalProtocolError):
        m.judges_asked(2, 0)


@given(st.lists(st.sampled_from(list(Input)), max_size=12))
def test_any_input_sequence_ends_consistently(inputs: list[Input]) -> None:
    m = DuelMachine(0.0, D)
    now = 0.0
    for inp in inputs:
        now += 100.0
        try:
            feed(m, inp, now)
        except LocalProtocolError:
            continue
    if m.state is State.SETTLED:
        assert m.verdicts >= 1
    assert (m.deadline is None) == (m.state in TERMINAL or m.state is State.START)
