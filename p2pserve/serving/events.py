"""The serving service's vocabulary, shared by the requester and executor sides: the infer
protocol's id and :class:`Deadlines`, the events a request yields (:class:`Started`,
:class:`TextDelta`, :class:`Completed`), the service's :class:`ServeCounters`, per-model
:class:`DispatchSettings`, and the per-request bookkeeping (:class:`Progress`,
:class:`Attempt`) that the dispatch loop and each executor's try share.

Pure: plain data, no I/O, no trio. Invariants: a request yields per executor one Started
before that executor's text, and exactly one Completed, last; counters only grow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from p2pserve.backends.base import TextDelta
from p2pserve.wire.infer import InferRequest, Receipt

__all__ = [
    "AccountStatus",
    "Admission",
    "Attempt",
    "Completed",
    "CreditHold",
    "Deadlines",
    "DispatchSettings",
    "Outcome",
    "Progress",
    "ServeCounters",
    "ServeEvent",
    "Started",
    "TextDelta",
    "Wallet",
]


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Bounds on every step of the infer protocol, in seconds of trio's clock."""

    connect_s: float = 5.0
    """Opening a stream to an executor."""
    accept_s: float = 2.0
    """From sending an offer to its Accept/Reject (WWW.Serve's 2 s probe timeout)."""
    first_token_s: float = 60.0
    """From Accept to the first chunk (prefill of a long prompt on a busy backend)."""
    idle_s: float = 30.0
    """Between two chunks, and from the last chunk to Done."""
    send_s: float = 10.0
    """Writing one message to a peer."""
    request_s: float = 300.0
    """Overall bound on receiving one remote answer (``server_params.request_timeout``)."""
    replay_window_s: float = 120.0
    """An executor refuses offers created further than this from its wall clock."""
    session_idle_s: float = 60.0
    """An executor ends an offer session (stream) that carried no new offer for this long."""
    pool_idle_s: float = 30.0
    """A requester reuses an idle session stream only this long (below ``session_idle_s``)."""
    cancel_s: float = 5.0
    """After its user left, how long a requester waits for the executor's partial receipt."""


# --- events a request produces ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """An executor began answering (sent before its first text). ``resumed``: it continues
    text another executor delivered before failing; a request has one Started per executor."""

    executor: str
    local: bool
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class Completed:
    """The answer is complete; always the last event.

    ``completion_tokens`` sums every executor's tokens (a vanished executor's are counted as
    the chunks it sent). ``receipt`` is the last executor's verified receipt (None when it
    ran locally or its receipt did not verify); ``receipts`` holds every verified receipt
    of this request, partial ones included, in order. ``offer`` is the signed offer the last
    executor answered (None when it ran locally): a duel order cites its header.
    """

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    executor: str
    local: bool
    receipt: Receipt | None = None
    receipts: tuple[Receipt, ...] = ()
    offer: InferRequest | None = None


ServeEvent = Started | TextDelta | Completed


@dataclass(slots=True)
class ServeCounters:
    """Counters for status and metrics (monotonic, since start)."""

    requests: int = 0
    """Our own users' requests submitted."""
    local: int = 0
    """Our own requests answered by a local model."""
    offloaded: int = 0
    """Our own requests answered (at least in part) by a peer."""
    served_for_peers: int = 0
    """Peers' requests we completed."""
    offers_rejected: int = 0
    """Peers' offers we refused (busy, replayed, wrong network, ...)."""
    failovers: int = 0
    """Times one of our requests moved to another executor."""
    failures: int = 0
    """Our own requests that ended in an error."""
    bad_receipts: int = 0
    """Receipts that did not verify (not paid)."""


class CreditHold(Protocol):
    """Credit set aside for one offered request (``ledger.service.Hold``)."""

    amount: int

    def pay(self, receipt: Receipt) -> bool: ...

    def release(self) -> None: ...


class Admission(Protocol):
    """A peer's offer taken on (``ledger.service.Admission``)."""

    def issued(self, receipt: Receipt) -> None: ...

    def close(self) -> None: ...


class Wallet(Protocol):
    """What serving needs from the node's ledger (``ledger.service.LedgerService``)."""

    def hold(self, amount: int) -> CreditHold | None:
        """Set ``amount`` aside for a request about to be offered, or None if not free."""
        ...

    def can_afford(self, price: int) -> bool: ...

    def available(self) -> int:
        """Micro-credits free to spend now (free credit less what is queued and held)."""
        ...

    def admit(self, requester: str, worst_case: int) -> Admission | str:
        """Take on a peer's offer, or the reason to refuse it (no account, credit, unpaid)."""
        ...


@runtime_checkable
class AccountStatus(Protocol):
    """A wallet that can say whether its ledger account is open yet (``LedgerService.opened``):
    a new node's opens only once a peer has confirmed its chain, and until then it can pay
    nothing. A wallet without ``opened`` is taken as open."""

    @property
    def opened(self) -> bool: ...


class DispatchSettings(Protocol):
    """Per-model dispatch settings (``policies.DispatchParams`` or the config's equivalent)."""

    @property
    def target_token_usage(self) -> float: ...

    @property
    def max_concurrency(self) -> int | None: ...


# --- per-request bookkeeping ----------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """What one user request has received so far, across executors."""

    delivered: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    receipts: list[Receipt] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    """Peers that failed this request (stalled, vanished, broke the protocol): never again."""
    reasons: list[str] = field(default_factory=list)
    """Why each executor refused or failed, for the final error message."""

    @property
    def text(self) -> str:
        return "".join(self.delivered)


class Outcome(enum.Enum):
    """How one attempt (a local run or one executor's try) ended."""

    COMPLETED = "completed"
    """The answer ended normally."""
    REFUSED = "refused"
    """Nothing was delivered: try elsewhere."""
    FAILED = "failed"
    """Text was delivered, then it broke: continue elsewhere or fail."""
    CANCELLED = "cancelled"
    """Our user left."""


@dataclass(slots=True)
class Attempt:
    """One executor's try: how it ended, the text it delivered, and the Completed event if
    it finished the answer."""

    outcome: Outcome = Outcome.REFUSED
    sent_text: list[str] = field(default_factory=list)
    completed: Completed | None = None

    def end(self, progress: Progress, who: str, outcome: Outcome, reason: str = "", *, exclude: bool = False,
            tokens: int | None = None) -> None:
        """Book this attempt's end (the one place it is done): its outcome, the tokens it
        delivered (``tokens`` from a verified receipt, else one per chunk sent), why, and
        whether ``who`` may be tried again for this request."""
        self.outcome = outcome
        if tokens is not None:
            progress.completion_tokens += tokens
        elif self.sent_text and outcome is not Outcome.COMPLETED:
            progress.completion_tokens += len(self.sent_text)
        if reason:
            progress.reasons.append(f"{who[-8:]}: {reason}")
        if exclude:
            progress.excluded.add(who)
