"""Time for p2pserve: trio's clock for durations and deadlines, and the one wall clock.

Durations, timeouts and deadlines always use trio's clock (``trio.current_time()``, or
``now`` passed into pure code), so ``MockClock`` drives every timer in tests and in the
simulator. Wall-clock time (seconds since the epoch) is only for what goes on the wire:
status and block timestamps, offer creation times, receipt stamps. It comes from a
:class:`Clock` that every service takes as an argument: the system's in production, a
virtual one (``epoch + trio.current_time()``) in tests and the simulator.

This is the only module that reads the system clock (``time.time``): a test guards it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

__all__ = ["EPOCH", "SYSTEM_CLOCK", "Clock", "virtual_clock"]

EPOCH = 1_767_225_600.0
"""2026-01-01T00:00:00Z: the wall time a virtual clock shows at trio time 0."""


class Clock:
    """Wall-clock seconds since the epoch (``wall``), and trio's clock (``monotonic``)."""

    __slots__ = ("_wall",)

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall

    def wall(self) -> float:
        """Seconds since the epoch."""
        return self._wall()

    def wall_ms(self) -> int:
        """Milliseconds since the epoch (what timestamps on the wire carry)."""
        return int(self._wall() * 1000)

    @staticmethod
    def monotonic() -> float:
        """trio's clock, in seconds (virtual under ``MockClock``)."""
        return trio.current_time()


SYSTEM_CLOCK = Clock(time.time)
"""The system's wall clock (production)."""


def virtual_clock(epoch: float = EPOCH) -> Clock:
    """A wall clock that follows trio's clock from ``epoch`` (tests, the simulator)."""
    return Clock(lambda: epoch + trio.current_time())
