"""The lifecycle of one user request, as a pure machine: where it runs next, when it waits,
when it gives up. Time and randomness are arguments; nothing here does I/O.

The serving service (:mod:`p2pserve.serving.service`) asks :meth:`RequestLifecycle.decide`
for the next :data:`Step` (run on a local model, offer to peers, wait, or fail), carries it
out, and reports how the attempt ended with :meth:`RequestLifecycle.ended`::

    PLACING ──local/remote completed──────────────────────────▶ DONE
       │  refused: decide again (local fallback, next round after
       │  ``retry_interval_s``, or 503 once ``max_wait_s`` is spent)
       │ text delivered, then the executor failed
       ▼
    CONTINUING ──completed──▶ DONE
       │ remote refused: continue locally if the local backend can, else FAILED
       │ failed again: next round (at most ``offer_fanout + 1`` rounds) ──▶ FAILED

Transitions are data (:data:`TRANSITIONS`, tested exhaustively). Guarantees: every wait is
longer than zero (so a virtual clock always advances) and never runs past the request's
wait budget; a refused offload round is retried after ``retry_interval_s`` for every
policy (the policy sees ``offload_failed`` only until then); a request with no local
model, a failed local model and no candidate fails at once.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

from p2pserve.errors import LocalProtocolError
from p2pserve.policies import LocalModel, Offload, Policy, PolicyParams, Queue, RequestContext, RunLocal, Wait
from p2pserve.serving.events import Outcome

__all__ = [
    "MIN_WAIT_S",
    "TRANSITIONS",
    "Fail",
    "Offer",
    "Phase",
    "RequestLifecycle",
    "Sleep",
    "Step",
    "UseLocal",
    "Where",
]

MIN_WAIT_S = 0.001
"""The shortest wait the lifecycle asks for (a zero wait would freeze a virtual clock)."""


class Phase(enum.Enum):
    PLACING = "placing"
    """No text delivered yet: choose where the request runs."""
    CONTINUING = "continuing"
    """Text was delivered, then its executor failed: continue the answer elsewhere."""
    DONE = "done"
    FAILED = "failed"


class Where(enum.Enum):
    LOCAL = "local"
    REMOTE = "remote"


@dataclass(frozen=True, slots=True)
class UseLocal:
    """Run on the local model (``queued``: even though it is busy; its backend queues it)."""

    queued: bool = False


@dataclass(frozen=True, slots=True)
class Offer:
    """Offer the request to peers (one round, candidates in routing order)."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``delay`` seconds (> 0), then decide again."""

    delay: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Give up. ``no_capacity``: nobody took it (HTTP 503); else it broke off mid-answer (502)."""

    no_capacity: bool
    message: str


Step = UseLocal | Offer | Sleep | Fail

TRANSITIONS: dict[tuple[Phase, Where, Outcome], Phase] = {
    (Phase.PLACING, Where.LOCAL, Outcome.COMPLETED): Phase.DONE,
    (Phase.PLACING, Where.LOCAL, Outcome.REFUSED): Phase.PLACING,
    (Phase.PLACING, Where.LOCAL, Outcome.FAILED): Phase.CONTINUING,
    (Phase.PLACING, Where.REMOTE, Outcome.COMPLETED): Phase.DONE,
    (Phase.PLACING, Where.REMOTE, Outcome.REFUSED): Phase.PLACING,
    (Phase.PLACING, Where.REMOTE, Outcome.FAILED): Phase.CONTINUING,
    (Phase.CONTINUING, Where.LOCAL, Outcome.COMPLETED): Phase.DONE,
    (Phase.CONTINUING, Where.LOCAL, Outcome.REFUSED): Phase.FAILED,
    (Phase.CONTINUING, Where.LOCAL, Outcome.FAILED): Phase.CONTINUING,
    (Phase.CONTINUING, Where.REMOTE, Outcome.COMPLETED): Phase.DONE,
    (Phase.CONTINUING, Where.REMOTE, Outcome.REFUSED): Phase.CONTINUING,
    (Phase.CONTINUING, Where.REMOTE, Outcome.FAILED): Phase.CONTINUING,
}
"""``(phase, where the attempt ran, how it ended) -> next phase``. A cancelled attempt (the
user left) and any attempt after DONE or FAILED are local misuse."""


class RequestLifecycle:
    """One user request's placement decisions (see the module docstring).

    ``has_local``: a local model serves the request's model; ``local_continues``: that
    model's backend can continue another executor's text; ``local_down``: its backend
    failed its last health check (treated as a local attempt that already failed)."""

    def __init__(
        self,
        model: str,
        policy: Policy,
        params: PolicyParams,
        now: float,
        *,
        has_local: bool,
        local_continues: bool,
        local_down: bool = False,
    ) -> None:
        self.model = model
        self.policy = policy
        self.params = params
        self.started = now
        self.wait_deadline = now + params.max_wait_s
        self.has_local = has_local
        self.local_continues = local_continues
        self.phase = Phase.PLACING
        self.local_failed = has_local and local_down
        """The local backend refused or failed this request (or was down): never again."""
        self.last_round = -float("inf")
        """When the last offload round started (trio time)."""
        self.offload_failed = False
        """The last offload round found nobody (reset once ``retry_interval_s`` passed)."""
        self.rounds = 0
        """Continuation rounds taken."""
        self.failure: Fail | None = None
        """Why the request failed, once it did."""
        self._local_next = False

    def decide(self, now: float, local: Sequence[LocalModel], has_candidates: bool, rng: random.Random) -> Step:
        """The next step. ``local``: the local models serving the request's model, as the
        policy sees them; ``has_candidates``: some peer could take it now."""
        if self.phase is Phase.PLACING:
            return self._place(now, local, has_candidates, rng)
        if self.phase is Phase.CONTINUING:
            return self._continue()
        raise LocalProtocolError(f"request lifecycle: nothing to decide once {self.phase.value}")

    def ended(self, where: Where, outcome: Outcome) -> Phase:
        """An attempt ended; the new phase."""
        nxt = TRANSITIONS.get((self.phase, where, outcome))
        if nxt is None:
            raise LocalProtocolError(f"request lifecycle: a {where.value} {outcome.value} in phase {self.phase.value}")
        if where is Where.LOCAL and outcome is not Outcome.COMPLETED:
            self.local_failed = True
        if where is Where.REMOTE and self.phase is Phase.PLACING:
            self.offload_failed = outcome is Outcome.REFUSED
        if self.phase is Phase.CONTINUING and where is Where.REMOTE and outcome is Outcome.REFUSED:
            if self.local_continues and not self.local_failed:
                self._local_next = True
            else:
                nxt = Phase.FAILED
        self.phase = nxt
        if nxt is Phase.FAILED:
            self.failure = Fail(False, "no executor could continue it")
        return nxt

    # --- internals -------------------------------------------------------------------------

    def _place(self, now: float, local: Sequence[LocalModel], has_candidates: bool, rng: random.Random) -> Step:
        p = self.params
        wake = self.last_round + p.retry_interval_s
        if self.offload_failed and now >= wake:
            self.offload_failed = False  # the retry interval passed: offloading is worth a new round
        usable = [] if self.local_failed or not self.has_local else list(local)
        ctx = RequestContext(self.model, has_candidates, self.offload_failed, now - self.started)
        decision = self.policy.decide(ctx, usable, now, rng)
        if isinstance(decision, Offload) and not has_candidates:
            decision = Wait(p.retry_interval_s)  # a policy that ignored has_candidates
        if isinstance(decision, Offload) and now < wake:
            decision = Wait(wake - now)  # at most one offload round per retry interval
        if isinstance(decision, (RunLocal, Queue)):
            if not usable or decision.model != self.model:
                return self._fail(f"the policy chose local model {decision.model!r} for {self.model!r}", now, True)
            return UseLocal(queued=isinstance(decision, Queue))
        if isinstance(decision, Offload):
            self.last_round = now
            return Offer()
        delay = max(decision.delay, MIN_WAIT_S)
        if self.local_failed and not has_candidates:
            return self._fail("the local backend failed and no peer can take it", now, True)
        if now + delay > self.wait_deadline:
            return self._fail("", now, True)
        return Sleep(delay)

    def _continue(self) -> Step:
        if self._local_next:
            self._local_next = False
            return UseLocal(queued=True)
        if self.rounds >= self.params.offer_fanout + 1:
            self.phase = Phase.FAILED
            self.failure = Fail(False, "no executor could continue it")
            return self.failure
        self.rounds += 1
        return Offer()

    def _fail(self, message: str, now: float, no_capacity: bool) -> Fail:
        self.phase = Phase.FAILED
        self.failure = Fail(no_capacity, message or f"no executor within {now - self.started:.1f}s")
        return self.failure
