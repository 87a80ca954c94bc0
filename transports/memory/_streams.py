"""In-memory streams: :class:`MemoryStream` ends over two timestamped :class:`_Pipe` s.

**Streams are reliable and ordered** (like TCP over the link). Each direction is a
timestamped delivery queue: a write is stamped ``max(now + latency + jitter, previous
stamp)`` and becomes readable at that time, so writes never wait behind sleeps and order is
kept per stream. A writer waits only when ``stream_window`` bytes are unread (back
pressure). Opening a stream or dialing costs one round trip. Data and end-of-stream queued
across a partition wait for :meth:`MemoryNetwork.heal` (TCP retransmits); a reset is
always seen.

When the connection under a stream dies (its peer vanished or was disconnected), receive
raises ``ConnectionBroken`` after the data already in flight, and so does send; after
``aclose`` or a reset our own calls raise ``StreamClosed``. Jitter draws come from a
per-stream RNG seeded by the network seed and the stream id.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from typing import TYPE_CHECKING

import trio

from p2pserve.errors import ConnectionBroken, StreamClosed

if TYPE_CHECKING:
    from p2pserve.net.guard import Meter
    from transports.memory import MemoryNetwork
    from transports.memory._transport import MemoryTransport

__all__ = ["MemoryStream"]

log = logging.getLogger("transports.memory")  # the public module's name: what applications configure

_DATA, _EOF, _RESET = 0, 1, 2
_DEFAULT_RECEIVE = 256 * 1024


class _Pipe:
    """One direction of a stream: a timestamped queue of data, EOF and reset items."""

    __slots__ = (
        "__weakref__",
        "buffered",
        "dst",
        "eof_sent",
        "items",
        "last_at",
        "lot",
        "reader_gone",
        "reset_pending",
        "rng",
        "space_lot",
        "src",
    )

    def __init__(self, src: str, dst: str, rng: random.Random) -> None:
        self.src = src
        self.dst = dst
        self.rng = rng
        self.items: deque[list[object]] = deque()  # [at, kind, bytes, offset]
        self.buffered = 0
        self.last_at = 0.0
        self.lot = trio.lowlevel.ParkingLot()
        self.space_lot = trio.lowlevel.ParkingLot()
        self.eof_sent = False
        self.reader_gone = False
        self.reset_pending = False

    def stamp(self, network: MemoryNetwork) -> float:
        spec = network.link(self.src, self.dst)
        at = trio.current_time() + spec.latency
        if spec.jitter:
            at += self.rng.random() * spec.jitter
        self.last_at = max(at, self.last_at)
        return self.last_at

    def push(self, network: MemoryNetwork, kind: int, data: bytes = b"") -> None:
        self.items.append([self.stamp(network), kind, data, 0])
        self.buffered += len(data)
        if kind == _RESET:
            self.reset_pending = True
        self.lot.unpark_all()


class MemoryStream:
    """One end of an in-memory stream. See the module docstring for timing and failure."""

    __slots__ = ("_closed", "_in", "_out", "_transport", "meter", "remote_peer")

    def __init__(self, transport: MemoryTransport, remote_peer: str, inbound: _Pipe, outbound: _Pipe) -> None:
        self._transport = transport
        self.remote_peer = remote_peer
        self._in = inbound
        self._out = outbound
        self._closed = False
        self.meter: Meter | None = None
        """What its frame reader holds, counted by the transport's stream guard."""

    async def send_all(self, data: bytes) -> None:
        """Queue every byte for the remote, waiting while ``stream_window`` bytes are unread."""
        await trio.lowlevel.checkpoint()
        window = self._transport.network.stream_window
        while True:
            self._check_send()
            if self._out.buffered < window or not data:
                break
            await self._out.space_lot.park()
        if data:
            self._out.push(self._transport.network, _DATA, bytes(data))

    def _check_send(self) -> None:
        if self._closed:
            raise StreamClosed("stream already closed")
        if self._out.eof_sent:
            raise StreamClosed("send_all after send_eof")
        if self._out.reader_gone:
            raise ConnectionBroken(f"stream to {self.remote_peer} was closed or reset by the remote")

    async def send_eof(self) -> None:
        """Half-close; idempotent. The remote reads ``b""`` after the data sent so far."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StreamClosed("stream already closed")
        if not self._out.eof_sent:
            self._out.eof_sent = True
            if not self._out.reader_gone:
                self._out.push(self._transport.network, _EOF)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """At least one byte, ``b""`` at end of stream; ConnectionBroken on reset."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        limit = max_bytes or _DEFAULT_RECEIVE
        pipe = self._in
        network = self._transport.network
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise StreamClosed("stream already closed")
            if not pipe.items:
                await pipe.lot.park()
                continue
            head = pipe.items[0]
            if pipe.reset_pending and network.blocked(pipe.src, pipe.dst):
                raise ConnectionBroken(f"stream from {self.remote_peer} was reset")
            if network._cuts and head[1] != _RESET and network.blocked(pipe.src, pipe.dst):
                network._waiting_for_heal.add(pipe)
                try:
                    await pipe.lot.park()
                finally:
                    network._waiting_for_heal.discard(pipe)
                continue
            at = head[0]
            assert isinstance(at, float)
            if at > trio.current_time():
                with trio.move_on_at(at):
                    await pipe.lot.park()
                continue
            if head[1] == _RESET:
                raise ConnectionBroken(f"stream from {self.remote_peer} was reset")
            if head[1] == _EOF:
                return b""
            return self._take(limit)

    def _take(self, limit: int) -> bytes:
        pipe = self._in
        now = trio.current_time()
        out: list[bytes] = []
        n = 0
        while pipe.items and n < limit:
            at, kind, data, off = pipe.items[0]
            assert isinstance(at, float) and isinstance(data, bytes) and isinstance(off, int)
            if kind != _DATA or at > now:
                break
            take = min(limit - n, len(data) - off)
            out.append(data[off : off + take])
            n += take
            if off + take == len(data):
                pipe.items.popleft()
            else:
                pipe.items[0][3] = off + take
        pipe.buffered -= n
        pipe.space_lot.unpark_all()
        return b"".join(out)

    async def aclose(self) -> None:
        """Close both directions; idempotent, never raises. The remote reads the data sent
        so far, then ``b""``; its further sends raise ConnectionBroken."""
        self._close_quietly()
        await trio.lowlevel.checkpoint()

    def _close_quietly(self) -> None:
        if self._closed:
            return
        network = self._transport.network
        if not self._out.eof_sent and not self._out.reader_gone:
            self._out.eof_sent = True
            self._out.push(network, _EOF)
        self._finish()

    def _reset(self, why: str) -> None:
        """Abort: the remote's receive and send raise ConnectionBroken; ours raise StreamClosed."""
        if self._closed:
            return
        log.debug("resetting stream %s -> %s: %s", self._transport.peer_id, self.remote_peer, why)
        if not self._out.reader_gone:
            self._out.push(self._transport.network, _RESET)
        self._finish()

    def _break(self) -> None:
        """The connection under this stream died: receive (after data in flight) and send
        raise ConnectionBroken; the stream stays open until the user closes it."""
        if self._closed:
            return
        if not self._in.reset_pending:
            self._in.push(self._transport.network, _RESET)
        self._out.reader_gone = True
        self._out.space_lot.unpark_all()

    def _finish(self) -> None:
        self._closed = True
        if self.meter is not None:
            self.meter.close()
        self._in.reader_gone = True
        self._in.items.clear()
        self._in.buffered = 0
        for pipe in (self._in, self._out):
            pipe.lot.unpark_all()
            pipe.space_lot.unpark_all()
        self._transport._unregister(self)
