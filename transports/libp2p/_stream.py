"""The stream adapter: trio stream semantics over a libp2p ``INetStream``.

Invariants: no libp2p or yamux exception escapes a :class:`Libp2pStream` (a broken stream
is ConnectionBroken, use after close is StreamClosed); ``aclose`` and ``_reset`` are
shielded and bounded by ``_STREAM_CLOSE_TIMEOUT``, so a stream's yamux slot is released
even when the caller is being cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from p2pserve.errors import ConnectionBroken, StreamClosed
from transports.libp2p._setup import log

if TYPE_CHECKING:
    from p2pserve.net.guard import Meter

__all__ = ["Libp2pStream"]

_READ_CHUNK = 65536
_STREAM_CLOSE_TIMEOUT = 1.0


class Libp2pStream:
    """Trio stream semantics over a libp2p ``INetStream`` (see :class:`p2pserve.transport.Stream`).

    ``receive_some`` returns ``b""`` at end of stream (and on every call after it) and
    raises ConnectionBroken on a reset or a dead connection; ``send_all`` raises
    ConnectionBroken when the peer is gone; both raise StreamClosed after ``aclose`` (and
    ``send_all`` after ``send_eof``). ``aclose`` half-closes gracefully (FIN, so data already
    sent is still delivered), falls back to a reset when that fails or hangs, is
    idempotent and never raises. Concurrent calls to the same direction are not supported.
    """

    __slots__ = ("_closed", "_eof_received", "_eof_sent", "_raw", "_remote_peer", "meter")

    def __init__(self, raw: INetStream, remote_peer: str) -> None:
        self._raw = raw
        self._remote_peer = remote_peer
        self._closed = False
        self._eof_sent = False
        self._eof_received = False
        self.meter: Meter | None = None
        """What its frame reader holds, counted by the transport's stream guard."""

    @property
    def remote_peer(self) -> str:
        return self._remote_peer

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise StreamClosed("send_all on a closed stream")
        if self._eof_sent:
            raise StreamClosed("send_all after send_eof")
        if not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._raw.write(bytes(data))
        except Exception as exc:
            raise ConnectionBroken(f"stream to {self._remote_peer} broke on send: {exc!r}") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise StreamClosed("receive_some on a closed stream")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._eof_received:
            await trio.lowlevel.checkpoint()
            return b""
        ready = not self._will_wait()
        try:
            data = await self._raw.read(max_bytes or _READ_CHUNK)
        except StreamEOF as exc:
            # yamux drops a reset stream's bookkeeping at once, so a later read reports
            # EOF; the flag on the muxed stream still tells a reset from a clean close
            if getattr(getattr(self._raw, "muxed_stream", None), "reset_received", False):
                raise ConnectionBroken(f"stream from {self._remote_peer} was reset") from exc
            self._eof_received = True
            return b""
        except Exception as exc:
            raise ConnectionBroken(
                f"stream from {self._remote_peer} broke on receive: {exc!r}"
            ) from exc
        finally:
            if ready:  # served without waiting: still a schedule point, as trio streams promise
                await trio.lowlevel.cancel_shielded_checkpoint()
        if not data:
            self._eof_received = True
        return bytes(data)

    def _will_wait(self) -> bool:
        """Whether a read now waits for data (a schedule point of its own): yamux holds none
        for this stream and it is still open for receiving. py-libp2p's locks do not yield
        when free (see ``_setup._QuickLock``), so a read served from the buffer would not."""
        muxed = getattr(self._raw, "muxed_stream", None)
        buffers = getattr(getattr(muxed, "conn", None), "stream_buffers", None)
        if muxed is None or buffers is None or getattr(muxed, "recv_closed", True):
            return False
        return not buffers.get(getattr(muxed, "stream_id", None))

    async def send_eof(self) -> None:
        if self._closed:
            raise StreamClosed("send_eof on a closed stream")
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        self._eof_sent = True
        try:
            await self._raw.close_write()  # type: ignore[attr-defined]  # NetStream has it
        except Exception as exc:
            raise ConnectionBroken(f"stream to {self._remote_peer} broke on send_eof: {exc!r}") from exc

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self.meter is not None:
            self.meter.close()
        # Shielded and bounded: the stream's yamux slot must be released even when the
        # caller is being cancelled (256 leaked streams block every later new_stream).
        with trio.CancelScope(shield=True):
            closed = False
            with trio.move_on_after(_STREAM_CLOSE_TIMEOUT):
                try:
                    await self._raw.close()
                    closed = True
                except Exception:
                    log.debug("graceful close failed, resetting", exc_info=True)
            if not closed:
                await self._reset_raw()

    async def _reset(self) -> None:
        """Abort both directions (the peer sees ConnectionBroken); marks the stream closed."""
        self._closed = True
        if self.meter is not None:
            self.meter.close()
        with trio.CancelScope(shield=True):
            await self._reset_raw()

    async def _reset_raw(self) -> None:
        with trio.move_on_after(_STREAM_CLOSE_TIMEOUT):
            try:
                await self._raw.reset()
            except Exception:
                log.debug("stream reset failed", exc_info=True)



def _remote_peer(raw: INetStream) -> str:
    try:
        return str(raw.muxed_conn.peer_id)
    except Exception:
        return "<unknown>"
