"""What happens to each request, for whoever wants to watch: the :class:`Tracer` seam of the
serving service (trio's ``Instrument`` is the model). The simulator measures time to first
token, latency, fail-overs and placements through it; the product's default does nothing.

Every hook is synchronous, must not raise, and gets trio's time (``now``). ``key`` names
the request (``ServeService.submit(..., key=...)``).
"""

from __future__ import annotations

from typing import Protocol

from p2pserve.serving.events import Outcome

__all__ = ["NULL_TRACER", "NullTracer", "Tracer"]


class Tracer(Protocol):
    def request_started(self, key: str, model: str, now: float) -> None: ...

    def attempt_started(self, key: str, executor: str, local: bool, now: float) -> None: ...

    def first_text(self, key: str, executor: str, now: float) -> None: ...

    def attempt_ended(self, key: str, executor: str, outcome: Outcome, now: float) -> None: ...

    def request_ended(self, key: str, ok: bool, executor: str | None, now: float) -> None: ...


class NullTracer:
    """Does nothing (the default)."""

    def request_started(self, key: str, model: str, now: float) -> None:
        return None

    def attempt_started(self, key: str, executor: str, local: bool, now: float) -> None:
        return None

    def first_text(self, key: str, executor: str, now: float) -> None:
        return None

    def attempt_ended(self, key: str, executor: str, outcome: Outcome, now: float) -> None:
        return None

    def request_ended(self, key: str, ok: bool, executor: str | None, now: float) -> None:
        return None


NULL_TRACER = NullTracer()
