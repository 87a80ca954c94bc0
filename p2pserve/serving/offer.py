"""The requester side of one offer on ``/p2pserve/infer/1``, as a sans-IO state machine.

An :class:`OfferSession` knows the protocol and nothing about streams or tasks (h11's
``Connection`` is the model): the async shell (:mod:`p2pserve.serving.client`) sends what
it says, feeds it what arrives (:meth:`OfferSession.receive`), when the deadline passes
(:meth:`~OfferSession.timeout`), when the stream ends or breaks
(:meth:`~OfferSession.closed`) and when the user leaves (:meth:`~OfferSession.cancel`),
and acts on the :class:`Event` s it gets back. Time is an argument (``now``, seconds of
trio's clock); nothing here does I/O.

The transitions are data (:data:`TRANSITIONS`: every (state, input) pair, tested
exhaustively)::

    IDLE ──sent──▶ AWAIT_REPLY ──accept──▶ STREAMING ──done──▶ COMPLETED
      │               │ reject, no reply,     │ chunk (loops)
      │               │ protocol, closed      │ failure, stall, broken, protocol
      │               ▼                       ▼
      │            REFUSED              FAILED (text delivered) / REFUSED (none)
      │                                       │ cancel (user left)
      └──cancel──▶ CANCELLED ◀──done/failure/─ CANCELLING ◀─┘
                              timeout/closed

Guarantees: chunks are delivered in order exactly once (an out-of-order index is a
protocol error); the answer's receipt is checked (:func:`~p2pserve.serving.receipts.
check_receipt`, bounds the requester can check itself) against exactly the text the
executor sent, before it is offered for payment; after a cancel, text still in flight is
read (not delivered) so the partial receipt covers it; the session is reusable (another
offer may follow on its stream) only when the executor's final message was read and
nothing is left unread; every misbehaviour is classified as an
:class:`~p2pserve.serving.offenders.Offence`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2pserve.errors import LocalProtocolError, RemoteProtocolError
from p2pserve.serving.events import Deadlines, Outcome
from p2pserve.serving.offenders import Offence
from p2pserve.serving.receipts import Bounds, check_receipt
from p2pserve.wire.codec import Message
from p2pserve.wire.infer import Accept, Chunk, Done, Failure, InferRequest, Receipt, Reject

__all__ = [
    "TRANSITIONS",
    "Accepted",
    "Ended",
    "Event",
    "Input",
    "OfferSession",
    "Outcome",
    "SendCancel",
    "Settled",
    "State",
    "Text",
]

SOFT_REJECTS = frozenset({"busy", "no-continuation"})
"""Reject reasons that do not exclude the executor from the rest of the request."""


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_REPLY = "await-reply"
    STREAMING = "streaming"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    REFUSED = "refused"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({State.COMPLETED, State.REFUSED, State.FAILED, State.CANCELLED})


class Input(enum.Enum):
    SENT = "sent"
    """(local) the offer went out."""
    ACCEPT = "accept"
    REJECT = "reject"
    CHUNK = "chunk"
    DONE = "done"
    FAILURE = "failure"
    GARBAGE = "garbage"
    """(remote) bytes that break the wire rules, or a message this state does not allow."""
    CLOSED = "closed"
    """(remote) the stream ended or broke."""
    TIMEOUT = "timeout"
    """(local) the session's deadline passed."""
    CANCEL = "cancel"
    """(local) our user left."""


_BROKE = "broke"
"""A target resolved to FAILED when text was delivered, else REFUSED."""

Target = State | str

_REMOTE_ERRORS = (Input.CHUNK, Input.DONE, Input.FAILURE, Input.GARBAGE, Input.ACCEPT, Input.REJECT)


def _table() -> dict[tuple[State, Input], tuple[Target, Offence | None]]:
    t: dict[tuple[State, Input], tuple[Target, Offence | None]] = {}
    # IDLE: nothing was sent, so nothing can be answered yet
    t[State.IDLE, Input.SENT] = (State.AWAIT_REPLY, None)
    t[State.IDLE, Input.CANCEL] = (State.CANCELLED, None)
    t[State.IDLE, Input.CLOSED] = (State.REFUSED, None)
    for i in _REMOTE_ERRORS:
        t[State.IDLE, i] = (State.REFUSED, Offence.PROTOCOL)
    # AWAIT_REPLY
    t[State.AWAIT_REPLY, Input.ACCEPT] = (State.STREAMING, None)
    t[State.AWAIT_REPLY, Input.REJECT] = (State.REFUSED, None)
    t[State.AWAIT_REPLY, Input.TIMEOUT] = (State.REFUSED, Offence.NO_REPLY)
    t[State.AWAIT_REPLY, Input.CLOSED] = (State.REFUSED, None)
    t[State.AWAIT_REPLY, Input.CANCEL] = (State.CANCELLED, None)
    for i in (Input.CHUNK, Input.DONE, Input.FAILURE, Input.GARBAGE):
        t[State.AWAIT_REPLY, i] = (State.REFUSED, Offence.PROTOCOL)
    # STREAMING
    t[State.STREAMING, Input.CHUNK] = (State.STREAMING, None)
    t[State.STREAMING, Input.DONE] = (State.COMPLETED, None)
    t[State.STREAMING, Input.FAILURE] = (_BROKE, None)
    t[State.STREAMING, Input.TIMEOUT] = (_BROKE, Offence.STALL)
    t[State.STREAMING, Input.CLOSED] = (_BROKE, Offence.BROKEN)
    t[State.STREAMING, Input.CANCEL] = (State.CANCELLING, None)
    for i in (Input.GARBAGE, Input.ACCEPT, Input.REJECT):
        t[State.STREAMING, i] = (_BROKE, Offence.PROTOCOL)
    # CANCELLING: read what is still in flight, then the executor's final message
    t[State.CANCELLING, Input.CHUNK] = (State.CANCELLING, None)
    t[State.CANCELLING, Input.CANCEL] = (State.CANCELLING, None)
    for i in (Input.DONE, Input.FAILURE, Input.TIMEOUT, Input.CLOSED, Input.GARBAGE, Input.ACCEPT, Input.REJECT):
        t[State.CANCELLING, i] = (State.CANCELLED, None)
    # terminal states: a late cancel or close changes nothing
    for s in TERMINAL:
        t[s, Input.CANCEL] = (s, None)
        t[s, Input.CLOSED] = (s, None)
    return t


TRANSITIONS: dict[tuple[State, Input], tuple[Target, Offence | None]] = _table()
"""``(state, input) -> (next state, offence)``. Pairs absent here are local misuse
(:class:`~p2pserve.errors.LocalProtocolError`): sending twice, a deadline with no
deadline set, input after the end."""


# --- events the shell acts on -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The executor took the offer."""


@dataclass(frozen=True, slots=True)
class Text:
    """Answer text to deliver to the user, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class SendCancel:
    """Send ``Cancel(request_id)`` now (the user left mid-answer)."""


@dataclass(frozen=True, slots=True)
class Settled:
    """The executor's receipt: ``receipt`` when it passed every check (pay it), else None
    with the ``problem`` (an offence: do not pay)."""

    receipt: Receipt | None
    partial: bool
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Ended:
    """The session is over (always the last event)."""

    outcome: Outcome
    reason: str
    """Why, for the user's error message (executor, reject reason, failure, ...)."""
    exclude: bool
    """Do not offer this request to this executor again."""
    offence: Offence | None
    reusable: bool
    """The stream may carry the next offer (the final message was read)."""
    final: Done | Failure | None = None
    """The executor's final message, when the session ended with one."""


Event = Accepted | Text | SendCancel | Settled | Ended


class OfferSession:
    """One offer of ``request`` to its executor (see the module docstring).

    ``hard_deadline`` (trio time) bounds the whole answer (``Deadlines.request_s``)."""

    def __init__(self, request: InferRequest, bounds: Bounds, deadlines: Deadlines, hard_deadline: float) -> None:
        self.request = request
        self.bounds = bounds
        self.deadlines = deadlines
        self.hard_deadline = hard_deadline
        self.state = State.IDLE
        self.deadline: float | None = None
        """When :meth:`timeout` is due (None: no deadline)."""
        self.delivered: list[str] = []
        """Text delivered to the user (the executor's chunks, in order)."""
        self.drained: list[str] = []
        """Text the executor sent after our cancel (not delivered, but paid for)."""
        self.chunks = 0
        self.offence: Offence | None = None
        self.outcome: Outcome | None = None
        self.receipt: Receipt | None = None
        """The executor's receipt once it passed every check."""
        self.reusable = False
        """The session ended cleanly: its stream may carry the next offer."""
        self.ended_by: Input | None = None
        """The input that ended the session."""

    @property
    def peer(self) -> str:
        return self.request.executor

    @property
    def text(self) -> str:
        """Everything the executor sent for this offer (what its receipt must cover)."""
        return "".join(self.delivered) + "".join(self.drained)

    # --- inputs ----------------------------------------------------------------------------

    def sent(self, now: float) -> list[Event]:
        """The offer went out."""
        self._step(Input.SENT, "")
        self.deadline = min(now + self.deadlines.accept_s, self.hard_deadline)
        return []

    def receive(self, msg: Message, now: float) -> list[Event]:
        """A message from the executor."""
        rid = self.request.request_id
        if isinstance(msg, Accept):
            if msg.request_id != rid:
                return self._step(Input.GARBAGE, "accepted another request")
            events = self._step(Input.ACCEPT, "accepted out of turn")
            if self.state is State.STREAMING:
                self.deadline = min(now + self.deadlines.first_token_s, self.hard_deadline)
                return [Accepted()]
            return events
        if isinstance(msg, Reject):
            if msg.request_id != rid:
                return self._step(Input.GARBAGE, "rejected another request")
            return self._step(Input.REJECT, f"rejected ({msg.reason})", exclude=msg.reason not in SOFT_REJECTS)
        if isinstance(msg, Chunk):
            return self._chunk(msg, now)
        if isinstance(msg, Done):
            return self._final(Input.DONE, msg, f"answered ({msg.finish_reason})", partial=False)
        if isinstance(msg, Failure):
            return self._final(Input.FAILURE, msg, f"failed ({msg.code}: {msg.message})", partial=True)
        return self._step(Input.GARBAGE, f"sent {type(msg).__name__}")

    def garbage(self, why: str) -> list[Event]:
        """Bytes that break the wire rules arrived (the stream is poisoned)."""
        return self._step(Input.GARBAGE, f"protocol error ({why})")

    def timeout(self, now: float) -> list[Event]:
        """The deadline passed (call when ``now >= deadline``)."""
        if self.deadline is None or now < self.deadline:
            raise LocalProtocolError(f"no deadline is due in state {self.state.value}")
        what = {State.AWAIT_REPLY: "no reply to the offer", State.STREAMING: "stalled mid-answer",
                State.CANCELLING: "no receipt after our cancel"}
        return self._step(Input.TIMEOUT, what.get(self.state, "timed out"))

    def closed(self, why: str = "stream ended") -> list[Event]:
        """The stream ended or broke."""
        return self._step(Input.CLOSED, why)

    def cancel(self, now: float) -> list[Event]:
        """Our user left. While the answer streams, the executor is told to stop."""
        was = self.state
        events = self._step(Input.CANCEL, "the user left", exclude=False)
        if was is State.STREAMING:
            self.deadline = now + self.deadlines.cancel_s
            return [SendCancel()]
        return events

    # --- internals -------------------------------------------------------------------------

    def _lookup(self, i: Input) -> tuple[State, Offence | None]:
        entry = TRANSITIONS.get((self.state, i))
        if entry is None:
            raise LocalProtocolError(f"offer session: {i.value} is not allowed in state {self.state.value}")
        target, offence = entry
        if target == _BROKE:
            target = State.FAILED if self.delivered else State.REFUSED
        assert isinstance(target, State)
        return target, offence

    def _step(
        self, i: Input, reason: str, *, exclude: bool = True, reusable: bool = False, final: Done | Failure | None = None
    ) -> list[Event]:
        """Take the transition for ``i``; an Ended event when it ends the session."""
        was = self.state
        target, offence = self._lookup(i)
        self.state = target
        if target not in TERMINAL or was in TERMINAL:
            return []
        self.deadline = None
        self.offence = self.offence or offence
        if i is Input.REJECT and was is State.AWAIT_REPLY:
            reusable = True
        if was is State.CANCELLING:
            reusable = reusable and i in (Input.DONE, Input.FAILURE)
        self.outcome = _OUTCOMES[target]
        self.reusable = reusable
        self.ended_by = i
        exclude = exclude and self.outcome in (Outcome.REFUSED, Outcome.FAILED)
        return [Ended(self.outcome, reason, exclude, self.offence, reusable, final)]

    def _chunk(self, msg: Chunk, now: float) -> list[Event]:
        if self.state in (State.STREAMING, State.CANCELLING) and msg.index != self.chunks:
            return self._step(Input.GARBAGE, f"chunk {msg.index} out of order (expected {self.chunks})")
        events = self._step(Input.CHUNK, "sent a chunk before accepting")
        if self.state is State.CANCELLING:
            self.chunks += 1
            self.drained.append(msg.text)
        elif self.state is State.STREAMING:
            self.chunks += 1
            self.deadline = min(now + self.deadlines.idle_s, self.hard_deadline)
            if msg.text:
                self.delivered.append(msg.text)
                return [Text(msg.text)]
        return events

    def _final(self, i: Input, msg: Done | Failure, reason: str, *, partial: bool) -> list[Event]:
        if self.state not in (State.STREAMING, State.CANCELLING):
            return self._step(i, f"{reason} before accepting")
        events: list[Event] = []
        receipt = msg.receipt
        if receipt is not None and (self.text or not partial):
            settled = self._settle(receipt, partial=partial)
            events.append(settled)
            if settled.receipt is None:
                self.offence = Offence.BAD_RECEIPT
            self.receipt = settled.receipt
        return events + self._step(i, reason, exclude=i is Input.FAILURE, reusable=True, final=msg)

    def _settle(self, receipt: Receipt, *, partial: bool) -> Settled:
        try:
            check_receipt(receipt, self.request, self.text, partial=partial, bounds=self.bounds)
        except RemoteProtocolError as exc:
            return Settled(None, partial, str(exc))
        return Settled(receipt, partial)


_OUTCOMES = {
    State.COMPLETED: Outcome.COMPLETED,
    State.REFUSED: Outcome.REFUSED,
    State.FAILED: Outcome.FAILED,
    State.CANCELLED: Outcome.CANCELLED,
}
