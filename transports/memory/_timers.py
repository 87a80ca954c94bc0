"""Deadlines shared by many waiting tasks: one trio timeout per distinct time, not per task.

Every memory transport's pubsub pump waits for its next arrival time. A trio timeout costs
a cancel scope and a ``Cancelled`` raised and caught, so with hundreds of transports that
is most of the simulator's scheduling overhead; yet arrivals are rounded to
``pubsub_tick``, so many transports wait for the same instant. :class:`SharedTimers` lets
the first task waiting for an instant (the leader) hold the only timeout for it; the others
park and the leader wakes them when it returns.

Invariant: a task in :meth:`SharedTimers.wait` returns no later than its deadline, and
earlier when its own lot is unparked. A leader that returns early (its lot unparked, or
cancelled) hands over by waking every follower: each then sees the time is not yet up,
waits again, and one of them becomes the new leader. Callers re-check their condition after
every return, so an early return is never wrong, only a little extra work.
"""

from __future__ import annotations

import trio

__all__ = ["SharedTimers"]


class SharedTimers:
    """Shared virtual-time deadlines for one :class:`~transports.memory.MemoryNetwork`."""

    __slots__ = ("_followers",)

    def __init__(self) -> None:
        # deadline -> lots of the tasks waiting for it behind its leader (dicts: ordered sets)
        self._followers: dict[float, dict[trio.lowlevel.ParkingLot, None]] = {}

    def __len__(self) -> int:
        """Distinct deadlines being waited for (each is one trio timeout)."""
        return len(self._followers)

    async def wait(self, deadline: float, lot: trio.lowlevel.ParkingLot) -> None:
        """Return at ``deadline`` (virtual time), or earlier once ``lot`` is unparked.

        ``lot`` must be parked on by this task only (e.g. a pump's own wake-up lot).
        """
        followers = self._followers.get(deadline)
        if followers is not None:
            followers[lot] = None
            try:
                await lot.park()
            finally:
                followers.pop(lot, None)
            return
        followers = self._followers[deadline] = {}
        try:
            with trio.move_on_at(deadline):
                await lot.park()
        finally:
            if self._followers.get(deadline) is followers:
                del self._followers[deadline]
            for follower in list(followers):
                follower.unpark_all()
