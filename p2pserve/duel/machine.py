"""One duel on the requester's side, as a sans-IO state machine.

The async coordinator (:mod:`p2pserve.duel.coordinator`) runs the shadow request, signs
the order, sends the judge tasks and pays the judges; this machine decides what comes next
and when the duel is over, and knows nothing about streams, tasks or clocks (``now`` is an
argument, like :class:`~p2pserve.serving.offer.OfferSession`). Every (state, input) pair
is in :data:`TRANSITIONS` and tested::

    START ──shadow_started──▶ SHADOW ──shadow_done──▶ ORDERING ──judges_asked(n)──▶ JUDGING
      │ no_executor             │ shadow_failed,        │ no_judge                    │ verdict / judge_failed
      ▼                         ▼ timeout               ▼                             │ (until none is pending),
    ABANDONED ◀─────────────────┴───────────────────────┘          timeout ──────────▶ SETTLED (a verdict came)
                                                                                       or ABANDONED (none)

``cancel`` (the node is stopping) abandons a duel from any live state. A duel is abandoned
with nothing moved: the executors were paid for their answers like any request, no verdict
was written, no judge was paid. Every live state has a deadline (:attr:`DuelMachine.deadline`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2pserve.errors import LocalProtocolError

__all__ = ["TERMINAL", "TRANSITIONS", "DuelMachine", "Input", "State"]


class State(enum.Enum):
    START = "start"
    SHADOW = "shadow"
    """The second executor is answering."""
    ORDERING = "ordering"
    """Both answers are in; the order is being signed and the judges drawn."""
    JUDGING = "judging"
    SETTLED = "settled"
    """At least one verdict came back (and its judge was paid)."""
    ABANDONED = "abandoned"


TERMINAL = frozenset({State.SETTLED, State.ABANDONED})


class Input(enum.Enum):
    SHADOW_STARTED = "shadow-started"
    NO_EXECUTOR = "no-executor"
    SHADOW_DONE = "shadow-done"
    SHADOW_FAILED = "shadow-failed"
    JUDGES_ASKED = "judges-asked"
    NO_JUDGE = "no-judge"
    VERDICT = "verdict"
    JUDGE_FAILED = "judge-failed"
    TIMEOUT = "timeout"
    CANCEL = "cancel"


_LIVE = (State.START, State.SHADOW, State.ORDERING, State.JUDGING)
_COUNTED = "counted"
"""A JUDGING input whose next state depends on the judges still pending."""

Target = State | str


def _table() -> dict[tuple[State, Input], Target]:
    t: dict[tuple[State, Input], Target] = {
        (State.START, Input.SHADOW_STARTED): State.SHADOW,
        (State.START, Input.NO_EXECUTOR): State.ABANDONED,
        (State.SHADOW, Input.SHADOW_DONE): State.ORDERING,
        (State.SHADOW, Input.SHADOW_FAILED): State.ABANDONED,
        (State.SHADOW, Input.TIMEOUT): State.ABANDONED,
        (State.ORDERING, Input.JUDGES_ASKED): State.JUDGING,
        (State.ORDERING, Input.NO_JUDGE): State.ABANDONED,
        (State.ORDERING, Input.TIMEOUT): State.ABANDONED,
        (State.JUDGING, Input.VERDICT): _COUNTED,
        (State.JUDGING, Input.JUDGE_FAILED): _COUNTED,
        (State.JUDGING, Input.TIMEOUT): _COUNTED,
    }
    for s in _LIVE:
        t[s, Input.CANCEL] = State.ABANDONED
    return t


TRANSITIONS: dict[tuple[State, Input], Target] = _table()
"""``(state, input) -> next state``; pairs absent here are local misuse (LocalProtocolError)."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long each step may take (seconds of trio's clock)."""

    shadow_s: float = 300.0
    """The second executor's whole answer (its offer has its own, shorter deadlines too)."""
    ordering_s: float = 10.0
    judging_s: float = 120.0
    """All judges' verdicts (a judge may generate a reference answer first)."""


class DuelMachine:
    """One duel (see the module docstring). ``deadline`` is when :meth:`timeout` is due."""

    def __init__(self, now: float, deadlines: Deadlines = Deadlines()) -> None:
        self.state = State.START
        self.deadlines = deadlines
        self.deadline: float | None = None
        self.pending = 0
        """Judges asked that have neither answered nor failed."""
        self.verdicts = 0
        self.reason = ""
        """Why the duel ended (for logs and counters)."""
        self.started = now

    @property
    def over(self) -> bool:
        return self.state in TERMINAL

    def shadow_started(self, now: float) -> State:
        return self._step(Input.SHADOW_STARTED, now)

    def no_executor(self, now: float) -> State:
        return self._step(Input.NO_EXECUTOR, now, "no second executor could take it")

    def shadow_done(self, now: float) -> State:
        return self._step(Input.SHADOW_DONE, now)

    def shadow_failed(self, now: float, why: str) -> State:
        return self._step(Input.SHADOW_FAILED, now, f"the second executor failed: {why}")

    def judges_asked(self, now: float, n: int) -> State:
        if n < 1:
            raise LocalProtocolError("judges_asked needs at least one judge (use no_judge)")
        self.pending = n
        return self._step(Input.JUDGES_ASKED, now)

    def no_judge(self, now: float) -> State:
        return self._step(Input.NO_JUDGE, now, "no judge other than the parties is known")

    def verdict(self, now: float) -> State:
        return self._step(Input.VERDICT, now)

    def judge_failed(self, now: float, why: str) -> State:
        return self._step(Input.JUDGE_FAILED, now, why)

    def timeout(self, now: float) -> State:
        if self.deadline is None or now < self.deadline:
            raise LocalProtocolError("no deadline is due")
        return self._step(Input.TIMEOUT, now, f"timed out in {self.state.value}")

    def cancel(self, now: float) -> State:
        return self._step(Input.CANCEL, now, "the node is stopping")

    def _step(self, inp: Input, now: float, why: str = "") -> State:
        target = TRANSITIONS.get((self.state, inp))
        if target is None:
            raise LocalProtocolError(f"{inp.value} is not possible in state {self.state.value}")
        if target == _COUNTED:
            target = self._count(inp)
        assert isinstance(target, State)
        if why:
            self.reason = why
        if target is not self.state:  # staying in JUDGING keeps the judges' deadline
            self.deadline = self._deadline_of(target, now)
        self.state = target
        return target

    def _count(self, inp: Input) -> State:
        if inp is Input.TIMEOUT:
            self.pending = 0
        else:
            self.pending -= 1
            self.verdicts += inp is Input.VERDICT
        if self.pending > 0:
            return State.JUDGING
        return State.SETTLED if self.verdicts else State.ABANDONED

    def _deadline_of(self, state: State, now: float) -> float | None:
        d = self.deadlines
        return {State.SHADOW: now + d.shadow_s, State.ORDERING: now + d.ordering_s, State.JUDGING: now + d.judging_s}.get(state)
