"""Length-prefixed messages over a transport :class:`~p2pserve.transport.Stream`.

Every protocol (infer, judge, sync) talks through :class:`FramedStream`: ``send`` encodes a
wire message and writes one frame; ``recv`` reads exactly one frame and decodes it with
:func:`p2pserve.wire.decode`. Framing itself is the sans-IO
:class:`~p2pserve.wire.framing.FrameDecoder`; this module is only the async shell.

Contract:

* ``recv`` returns a message of the expected class(es) or raises:

  - :class:`~p2pserve.errors.ConnectionBroken` when the stream ends (``b""``) while a message
    is expected, at a frame boundary or inside a frame: protocols end their exchanges
    explicitly, so an early end of stream means the peer vanished (libp2p cannot always
    tell a crash from a close). ``recv_or_eof`` is the variant for "another message or the
    end" and returns None on an end of stream at a frame boundary;
  - :class:`~p2pserve.errors.PeerTimeout` when ``timeout`` seconds (trio's clock) pass first;
  - a :class:`~p2pserve.errors.RemoteProtocolError` subclass (``FrameTooLarge``,
    ``MalformedMessage``) for bytes that break the wire rules. The framed stream is then
    poisoned (every later ``recv`` raises the same class); the caller closes the stream.

* ``send`` raises :class:`~p2pserve.errors.LocalProtocolError` for a message whose encoding
  exceeds ``max_frame`` (nothing is written), and whatever the transport raises otherwise
  (``ConnectionBroken``, ``StreamClosed``), or ``PeerTimeout`` after ``timeout``.
* ``send_many`` writes several messages with one ``send_all`` (fewer muxer frames,
  encryptions and syscalls than one ``send`` each); the peer sees the same frames.
* ``recv_buffered`` is ``recv`` without I/O: the next message if its frame is already
  buffered, else None. ``buffered`` counts bytes received but not yet decoded.
* ``aclose`` is idempotent and never raises. A FramedStream is used by one task at a time
  for receiving and one for sending.
* Resource caps: when the stream carries a :class:`~p2pserve.transport.BufferMeter`
  (``stream.meter``, set by the transports), every change in ``buffered`` is reported to
  it. When the meter refuses (the peer is over its caps, :mod:`p2pserve.net.caps`), the
  buffered bytes are dropped at once and ``recv`` raises ``RemoteProtocolError`` (poisoned,
  as for any wire error).
"""

from __future__ import annotations

from typing import TypeVar, overload

import trio

from p2pserve.errors import ConnectionBroken, PeerTimeout, RemoteProtocolError
from p2pserve.transport import BufferMeter, Stream
from p2pserve.wire.codec import Message, decode, encode
from p2pserve.wire.framing import FrameDecoder, encode_frame
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = ["RECEIVE_CHUNK", "FramedStream"]

M = TypeVar("M", bound=Message)

RECEIVE_CHUNK = 64 * 1024
"""Most bytes asked of the stream per ``receive_some`` call."""


class FramedStream:
    """One message per frame over ``stream``; see the module docstring for the contract."""

    __slots__ = ("_decoder", "_eof", "_error", "_meter", "max_frame", "stream")

    def __init__(self, stream: Stream, max_frame: int = DEFAULT_LIMITS.max_frame) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._error: RemoteProtocolError | None = None
        self._eof = False
        meter = getattr(stream, "meter", None)
        self._meter: BufferMeter | None = meter if isinstance(meter, BufferMeter) else None

    @property
    def remote_peer(self) -> str:
        return self.stream.remote_peer

    @property
    def buffered(self) -> int:
        """Bytes received from the stream and not yet returned as messages."""
        return self._decoder.buffered

    def frame(self, msg: Message) -> bytes:
        """``msg`` as one frame, ready for :meth:`send_frames` (LocalProtocolError if too large)."""
        return encode_frame(encode(msg), self.max_frame)

    async def send(self, msg: Message, *, timeout: float | None = None) -> None:
        """Write ``msg`` as one frame (see the module docstring for errors)."""
        await self.send_frames(self.frame(msg), timeout=timeout, what=type(msg).__name__)

    async def send_many(self, msgs: list[Message], *, timeout: float | None = None) -> None:
        """Write ``msgs`` in order with a single ``send_all`` (nothing is written if one is too large)."""
        data = b"".join(self.frame(m) for m in msgs)
        await self.send_frames(data, timeout=timeout, what=f"{len(msgs)} messages")

    async def send_frames(self, frame: bytes, *, timeout: float | None = None, what: str = "frames") -> None:
        """Write already encoded frames (from :meth:`frame`) with one ``send_all``."""
        if timeout is None:
            await self.stream.send_all(frame)
            return
        with trio.move_on_after(timeout) as scope:
            await self.stream.send_all(frame)
        if scope.cancelled_caught:
            raise PeerTimeout(f"sending {what} to {self.remote_peer} took over {timeout}s")

    async def send_eof(self) -> None:
        """Half-close: the peer's next read after our frames sees the end of stream."""
        await self.stream.send_eof()

    @overload
    async def recv(self, expect: type[M], *, timeout: float | None = None) -> M: ...

    @overload
    async def recv(self, expect: tuple[type[M], ...], *, timeout: float | None = None) -> M: ...

    @overload
    async def recv(self, expect: None = None, *, timeout: float | None = None) -> Message: ...

    async def recv(
        self, expect: type[Message] | tuple[type[Message], ...] | None = None, *, timeout: float | None = None
    ) -> Message:
        """The next message, which must be one of ``expect`` (any registered class if None)."""
        msg = await self._recv(expect, timeout)
        if msg is None:
            raise ConnectionBroken(f"stream from {self.remote_peer} ended while a message was expected")
        return msg

    @overload
    async def recv_or_eof(self, expect: type[M], *, timeout: float | None = None) -> M | None: ...

    @overload
    async def recv_or_eof(self, expect: tuple[type[M], ...], *, timeout: float | None = None) -> M | None: ...

    @overload
    async def recv_or_eof(self, expect: None = None, *, timeout: float | None = None) -> Message | None: ...

    async def recv_or_eof(
        self, expect: type[Message] | tuple[type[Message], ...] | None = None, *, timeout: float | None = None
    ) -> Message | None:
        """Like ``recv``, but a clean end of stream at a frame boundary returns None."""
        return await self._recv(expect, timeout)

    def recv_buffered(self, expect: type[Message] | tuple[type[Message], ...] | None = None) -> Message | None:
        """The next message if its whole frame is already buffered, else None (no I/O).

        Raises like ``recv`` for a frame that breaks the wire rules or an unexpected class."""
        if self._error is not None:
            raise type(self._error)(f"stream already failed: {self._error}")
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                return None
            self._account()
            return decode(frame, expect)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    async def _recv(
        self, expect: type[Message] | tuple[type[Message], ...] | None, timeout: float | None
    ) -> Message | None:
        if timeout is None:
            frame = await self._next_frame()
        else:
            frame = None
            with trio.move_on_after(timeout) as scope:
                frame = await self._next_frame()
            if scope.cancelled_caught:
                raise PeerTimeout(f"no message from {self.remote_peer} within {timeout}s")
        if frame is None:
            return None
        try:
            return decode(frame, expect)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    async def _next_frame(self) -> bytes | None:
        """The next frame, or None for an end of stream at a frame boundary."""
        if self._error is not None:
            raise type(self._error)(f"stream already failed: {self._error}")
        while True:
            try:
                frame = self._decoder.next_frame()
            except RemoteProtocolError as exc:
                self._error = exc
                raise
            if frame is not None:
                self._account()
                return frame
            if not self._eof:
                data = await self.stream.receive_some(RECEIVE_CHUNK)
                if data:
                    self._decoder.feed(data)
                    self._account()
                    continue
                self._eof = True
            if self._decoder.buffered:
                raise ConnectionBroken(
                    f"stream from {self.remote_peer} ended inside a frame ({self._decoder.buffered} bytes buffered)"
                )
            return None

    def _account(self) -> None:
        """Tell the meter what we hold now; over the caps, drop it and fail (poisoned)."""
        meter = self._meter
        if meter is None or meter.hold(self._decoder.buffered):
            return
        held = self._decoder.buffered
        self._decoder = FrameDecoder(self.max_frame)
        meter.hold(0)
        self._error = RemoteProtocolError(
            f"{self.remote_peer} is over its stream caps ({held} bytes held on this stream); stream dropped"
        )
        raise self._error

    async def aclose(self) -> None:
        """Close the underlying stream. Idempotent; never raises."""
        await self.stream.aclose()
