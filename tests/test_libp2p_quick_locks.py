"""The quick locks of transports.libp2p._setup: py-libp2p's free locks are taken without a
trip through trio's scheduler; held ones are still waited for, in order; cancellation is
still honoured; yamux's streams lock stays trio's own."""

from __future__ import annotations

import libp2p.io.trio
import libp2p.network.stream.net_stream
import libp2p.stream_muxer.rw_lock
import libp2p.stream_muxer.yamux.yamux as yamux
import pytest
import trio
import trio.testing

from transports.libp2p._setup import _configure_process, _QuickLock, _QuickSemaphore


@pytest.mark.parametrize("make", [_QuickLock, lambda: _QuickSemaphore(1)])
async def test_a_free_lock_is_taken_without_a_schedule_point(make: object) -> None:
    lock = make()  # type: ignore[operator]
    task = trio.lowlevel.current_task()
    before = task._schedule_points  # what trio.testing.assert_no_checkpoints reads too
    await lock.acquire()
    assert task._schedule_points == before
    lock.release()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await lock.acquire()  # a pending cancellation is still raised
    await lock.acquire()  # and the lock was not taken by the cancelled try
    lock.release()


@pytest.mark.parametrize("make", [_QuickLock, lambda: _QuickSemaphore(1)])
async def test_a_held_lock_is_waited_for_in_order(make: object, autojump_clock: trio.testing.MockClock) -> None:
    lock = make()  # type: ignore[operator]
    inside: list[int] = []
    order: list[int] = []

    async def worker(i: int) -> None:
        async with lock:
            inside.append(i)
            assert len(inside) == 1  # mutual exclusion
            order.append(i)
            await trio.sleep(1)
            inside.remove(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(worker, i)
            await trio.sleep(0.1)  # each arrives while the first still holds it
    assert order == [0, 1, 2, 3, 4]
    assert trio.current_time() == pytest.approx(5.0)


async def test_waiting_for_a_held_lock_can_be_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    lock = _QuickLock()
    release = trio.Event()

    async def holder(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with lock:
            task_status.started()
            await release.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        with trio.move_on_after(1) as scope:
            await lock.acquire()
        assert scope.cancelled_caught and lock.locked()
        release.set()
    assert not lock.locked()


def test_libp2p_objects_get_quick_locks_but_yamux_keeps_its_streams_lock() -> None:
    _configure_process()
    rw = libp2p.stream_muxer.rw_lock.ReadWriteLock()
    assert isinstance(rw._readers_lock, _QuickLock) and isinstance(rw._writer_lock, _QuickSemaphore)
    for cls, names in (
        (libp2p.io.trio.TrioTCPStream, ("read_lock", "write_lock")),
        (libp2p.network.stream.net_stream.NetStream, ("_state_lock",)),
        (yamux.YamuxStream, ("window_lock", "close_lock")),
        (yamux.Yamux, ("_write_lock",)),
    ):
        assert hasattr(cls.__init__, "__wrapped__"), cls
    cells = [c.cell_contents for c in yamux.Yamux.__init__.__closure__ or ()]
    assert ("_write_lock",) in cells  # and not streams_lock (see _QUICK_LOCKS)
