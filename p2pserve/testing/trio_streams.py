"""trio's generic stream checks on a transport's streams: :class:`TrioStreamAdapter` (a
contract stream seen as a ``trio.abc.HalfCloseableStream``) and :class:`TrioStreamChecks`,
the part of :class:`~p2pserve.testing.transport_suite.TransportConformance` that runs
``trio.testing.check_half_closeable_stream`` and probes the gaps a transport declares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing

from p2pserve.errors import ConnectionBroken, StreamClosed
from p2pserve.testing.stream_helpers import connect
from p2pserve.transport import Stream

__all__ = ["TRIO_PROTO", "TRIO_STREAM_GAPS", "TrioStreamAdapter", "TrioStreamChecks"]

TRIO_PROTO = "/p2pserve/test/trio-stream/1"
StreamPairMaker = Callable[[], Awaitable[tuple["TrioStreamAdapter", "TrioStreamAdapter"]]]


TRIO_STREAM_GAPS: dict[str, str] = {
    "max_bytes_type": "receive_some(1.5) raises TypeError",
    "close_wakes_receiver": "aclose() wakes a task blocked in receive_some on the same stream, which raises",
    "remote_close_breaks_send": "after the remote end's aclose(), send_all raises (eventually)",
}
"""The properties of ``trio.testing``'s stream checks that a transport may declare it lacks
(``TransportConformance.trio_stream_gaps``), each with what trio expects."""


class TrioStreamAdapter(trio.abc.HalfCloseableStream):
    """A :class:`p2pserve.transport.Stream` seen as a ``trio.abc.HalfCloseableStream``, so
    that ``trio.testing``'s generic stream checks run against a transport's streams.

    It translates what the contract words differently from trio, and nothing else:
    :class:`~p2pserve.errors.StreamClosed` becomes ``trio.ClosedResourceError`` and
    :class:`~p2pserve.errors.ConnectionBroken` becomes ``trio.BrokenResourceError`` (the
    contract raises p2pserve errors, never trio's); ``send_all`` passes ``bytes`` (the
    contract's type) for any bytes-like argument; ``wait_send_all_might_not_block``, which
    the contract does not have, is a checkpoint (so the checks run without a "clogged"
    stream). Calls, their checkpoints, cancellation and argument checks are the transport's.
    One addition: trio streams raise ``trio.BusyResourceError`` when two tasks use one
    direction at once; the contract leaves that undefined ("not supported"), so the adapter
    enforces it, as trio's own stream wrappers do.

    ``workarounds`` names entries of :data:`TRIO_STREAM_GAPS` to paper over, so that the
    checks after a known gap still run: ``max_bytes_type`` checks the argument's type here;
    ``close_wakes_receiver`` cancels our own blocked ``receive_some`` on ``aclose``;
    ``remote_close_breaks_send`` makes ``send_all`` raise once :attr:`peer` (the other end,
    in the same process in the suite) was closed. ``closed`` is set by :meth:`aclose`.
    """

    def __init__(self, stream: Stream, workarounds: frozenset[str] = frozenset()) -> None:
        unknown = workarounds - TRIO_STREAM_GAPS.keys()
        if unknown:
            raise ValueError(f"unknown trio stream gaps: {sorted(unknown)}")
        self.stream = stream
        self.workarounds = workarounds
        self.closed = trio.Event()
        self.peer: TrioStreamAdapter | None = None
        self._busy: set[str] = set()
        self._scopes: dict[str, trio.CancelScope] = {}
        self._remote_closed = False

    @contextmanager
    def _call(self, direction: str, interruptible: bool) -> Iterator[trio.CancelScope]:
        """One call on ``direction``: Busy if another is running, errors translated; the
        scope it yields is cancelled by a workaround (``interruptible``) to end the call."""
        if direction in self._busy:
            raise trio.BusyResourceError(f"another task is already using the {direction} side")
        self._busy.add(direction)
        try:
            with trio.CancelScope() as scope:
                if interruptible:
                    self._scopes[direction] = scope
                yield scope
        except StreamClosed as exc:
            raise trio.ClosedResourceError(str(exc)) from exc
        except ConnectionBroken as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            self._busy.discard(direction)
            self._scopes.pop(direction, None)

    def _check_remote_closed(self) -> None:
        if self._remote_closed and not self.closed.is_set():
            raise trio.BrokenResourceError("the remote end closed the stream (workaround)")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        workaround = "remote_close_breaks_send" in self.workarounds
        if workaround:
            self._check_remote_closed()
        with self._call("send", workaround) as scope:
            await self.stream.send_all(bytes(data))
        if scope.cancelled_caught:
            self._check_remote_closed()

    async def wait_send_all_might_not_block(self) -> None:
        with self._call("send", False):
            await trio.lowlevel.checkpoint()
            if self.closed.is_set():
                raise trio.ClosedResourceError("stream already closed")

    async def send_eof(self) -> None:
        with self._call("send", False):
            await self.stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if "max_bytes_type" in self.workarounds and not (max_bytes is None or isinstance(max_bytes, int)):
            raise TypeError("max_bytes must be an int or None (workaround)")
        with self._call("receive", "close_wakes_receiver" in self.workarounds):
            return await self.stream.receive_some(max_bytes)
        raise trio.ClosedResourceError("stream closed while receiving (workaround)")

    async def aclose(self) -> None:
        if "close_wakes_receiver" in self.workarounds and "receive" in self._scopes:
            self._scopes["receive"].cancel()
        peer = self.peer
        if "remote_close_breaks_send" in self.workarounds and peer is not None:
            peer._remote_closed = True
            if "send" in peer._scopes:
                peer._scopes["send"].cancel()
        try:
            await self.stream.aclose()
        finally:
            self.closed.set()


class TrioStreamChecks:
    """trio's stream checks, as test methods a transport suite inherits. Expects the
    suite's ``timeout``, ``settle`` and ``trio_stream_gaps`` attributes."""

    timeout: float
    settle: float
    trio_stream_gaps: frozenset[str]


    async def _trio_stream_pairs(self, make_transports: Any, workarounds: frozenset[str] = frozenset()) -> StreamPairMaker:
        """Connect two fresh transports; return a maker of (opener's end, handler's end) pairs."""
        a, b = await make_transports(2)
        send, receive = trio.open_memory_channel[TrioStreamAdapter](0)

        async def handler(stream: Stream) -> None:
            end = TrioStreamAdapter(stream, workarounds)
            await send.send(end)
            await end.closed.wait()  # returning would close the stream under the check

        b.set_handler(TRIO_PROTO, handler)
        await connect(a, b)

        async def pair() -> tuple[TrioStreamAdapter, TrioStreamAdapter]:
            opener = TrioStreamAdapter(await a.open_stream(b.peer_id, TRIO_PROTO), workarounds)
            accepter = await receive.receive()
            opener.peer, accepter.peer = accepter, opener
            return opener, accepter

        return pair

    async def test_trio_half_closeable_stream_checks(self, transport_clock: Any, make_transports: Any) -> None:
        """``trio.testing.check_half_closeable_stream`` (which includes
        ``check_two_way_stream`` and ``check_one_way_stream`` in both directions) on the
        transport's streams, with its declared ``trio_stream_gaps`` papered over."""
        pair = await self._trio_stream_pairs(make_transports, self.trio_stream_gaps)
        with trio.fail_after(self.timeout * 6):
            await trio.testing.check_half_closeable_stream(pair, None)

    async def test_declared_trio_stream_gaps_are_real(self, transport_clock: Any, make_transports: Any) -> None:
        """Each declared gap still shows on a stream without workarounds (once the transport
        has the property, this fails: take the gap out of ``trio_stream_gaps``)."""
        if not self.trio_stream_gaps:
            pytest.skip("no trio stream gaps declared")
        pair = await self._trio_stream_pairs(make_transports)
        probes = {
            "max_bytes_type": self._gap_max_bytes_type,
            "close_wakes_receiver": self._gap_close_wakes_receiver,
            "remote_close_breaks_send": self._gap_remote_close_breaks_send,
        }
        fixed = []
        for gap in sorted(self.trio_stream_gaps):
            opener, accepter = await pair()
            try:
                with trio.fail_after(self.timeout):
                    if not await probes[gap](opener, accepter):
                        fixed.append(f"{gap} ({TRIO_STREAM_GAPS[gap]})")
            finally:
                await trio.aclose_forcefully(opener)
                await trio.aclose_forcefully(accepter)
        assert not fixed, f"the transport has these properties now; remove them from trio_stream_gaps: {fixed}"

    async def _gap_max_bytes_type(self, opener: TrioStreamAdapter, accepter: TrioStreamAdapter) -> bool:
        with trio.move_on_after(self.settle):
            try:
                await accepter.receive_some(1.5)  # type: ignore[arg-type]  # the point of the probe
            except TypeError:
                return False
            except Exception:
                return True
        return True  # still waiting for data instead of refusing the argument

    async def _gap_close_wakes_receiver(self, opener: TrioStreamAdapter, accepter: TrioStreamAdapter) -> bool:
        woke = trio.Event()

        async def receive() -> None:
            try:
                await accepter.receive_some(10)
            except Exception:
                pass
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            await trio.aclose_forcefully(accepter)
            with trio.move_on_after(self.settle):
                await woke.wait()
            nursery.cancel_scope.cancel()
        return not woke.is_set()

    async def _gap_remote_close_breaks_send(self, opener: TrioStreamAdapter, accepter: TrioStreamAdapter) -> bool:
        await opener.aclose()
        with trio.move_on_after(self.settle):
            try:
                while True:
                    await accepter.send_all(b"x" * 100)
                    await trio.sleep(0.01)
            except trio.BrokenResourceError:
                return False
        return True  # the sends still succeed (the remote discards them) or block
