"""A backend that plays a script, for serving tests in virtual time.

:class:`ScriptedBackend` implements :class:`p2pserve.backends.base.Backend` by playing a
script of steps: a ``str`` is one text delta (a :class:`~p2pserve.backends.base.TextDelta`
is played as it is, ``more`` included), :class:`Sleep` waits on trio's clock,
:class:`Fail` raises :class:`~p2pserve.errors.BackendUnavailable`, :class:`Hang` never
produces anything again (until cancelled). After the last step it yields one
:class:`~p2pserve.backends.base.Finished` whose ``completion_tokens`` is the number of
deltas played. Every wait is a trio sleep, so under ``MockClock(autojump_threshold=0)``
(pytest-trio's ``autojump_clock``) a script that sleeps for minutes runs in no real time::

    backend = ScriptedBackend(script=("The", " cat", Sleep(5), Fail("GPU fell off")))

Its fields are plain attributes that a test may change between requests (``script``,
``load_value``) or read afterwards (``calls``, ``running``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.lowlevel

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, TextDelta
from p2pserve.errors import BackendUnavailable

__all__ = ["Fail", "Hang", "ScriptedBackend", "Sleep", "Step"]


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` on trio's clock."""

    seconds: float


@dataclass(frozen=True)
class Fail:
    """Raise :class:`~p2pserve.errors.BackendUnavailable` with ``message``."""

    message: str = "backend exploded"


@dataclass(frozen=True)
class Hang:
    """Never produce anything again (until cancelled)."""


Step = str | TextDelta | Sleep | Fail | Hang
"""One step of a script: a text delta, or one of :class:`Sleep`, :class:`Fail`, :class:`Hang`."""


@dataclass
class ScriptedBackend(Backend):
    """A backend that plays ``script``: strings are deltas, then a Finished (``finish_reason``).

    ``load_value`` is what :meth:`load` reports; when ``None`` it reports an in-flight load
    from its own count of running generations. ``calls`` records (kind, body, continuation).
    """

    model: str = "m"
    script: Sequence[Step] = ("Hello", " world")
    finish_reason: str = "stop"
    load_value: Load | None = None
    max_concurrency: int = 4
    supports_continuation: bool = False
    calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    running: int = 0

    async def generate(
        self, kind: Kind, body: dict[str, Any], *, continuation: str = ""
    ) -> AsyncIterator[GenerationEvent]:
        self.calls.append((kind, body, continuation))
        self.running += 1
        try:
            n = 0
            for step in self.script:
                if isinstance(step, str | TextDelta):
                    n += 1
                    yield TextDelta(step) if isinstance(step, str) else step
                    await trio.lowlevel.checkpoint()
                elif isinstance(step, Sleep):
                    await trio.sleep(step.seconds)
                elif isinstance(step, Fail):
                    raise BackendUnavailable(step.message)
                else:
                    await trio.sleep(math.inf)
            yield Finished(self.finish_reason, prompt_tokens=3, completion_tokens=n)
        finally:
            self.running -= 1

    async def load(self) -> Load:
        if self.load_value is not None:
            return self.load_value
        return Load(running=self.running, queued=0, source="inflight")
