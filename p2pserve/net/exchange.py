"""Request/response plumbing shared by every stream protocol (infer, sync, and the coming
judge): opening a framed stream with a deadline, and a pool of idle *session* streams per
peer that a protocol may reuse for its next exchange.

A new stream costs a multistream-select negotiation (~3 ms of the ~5 ms an offload used to
add), so protocols whose exchanges end with an explicit final message keep the stream
open and send the next request on it. The pool keeps such idle streams per peer, newest
first, at most ``max_per_peer``, for ``idle_s`` seconds (below the remote side's own idle
limit); a stream whose exchange did not end cleanly is never returned to it, so a late
reply is never read by the next exchange. Every wait is bounded (trio's clock). The pool
tells ``on_open`` (when set) how each attempt to open a new stream ended, so its owner can
count peers that advertise but cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from p2pserve.errors import PeerTimeout, TransportError
from p2pserve.net.framed import FramedStream
from p2pserve.transport import Stream, Transport
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = ["SessionPool", "open_framed"]


async def open_framed(
    transport: Transport, peer: str, protocol: str, *, connect_s: float, max_frame: int = DEFAULT_LIMITS.max_frame
) -> FramedStream:
    """A new framed stream to ``peer`` on ``protocol``; PeerTimeout after ``connect_s``
    seconds, DialError when it cannot be opened."""
    stream: Stream | None = None
    with trio.move_on_after(connect_s):
        stream = await transport.open_stream(peer, protocol)
    if stream is None:
        raise PeerTimeout(f"could not open a {protocol} stream to {peer} within {connect_s}s")
    return FramedStream(stream, max_frame)


class SessionPool:
    """Idle session streams of one protocol, per peer (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        protocol: str,
        *,
        idle_s: float,
        connect_s: float,
        max_per_peer: int = 64,
        max_frame: int = DEFAULT_LIMITS.max_frame,
    ) -> None:
        self.transport = transport
        self.protocol = protocol
        self.idle_s = idle_s
        self.connect_s = connect_s
        self.max_per_peer = max_per_peer
        self.max_frame = max_frame
        self.idle: dict[str, list[tuple[float, FramedStream]]] = {}
        """Per peer, ``(since, stream)`` of streams whose last exchange ended cleanly."""
        self.opened = 0
        """Streams opened (for tests and metrics)."""
        self.on_open: Callable[[str, TransportError | None], None] | None = None
        """Told ``(peer, None)`` after a new stream to ``peer`` opened, ``(peer, error)``
        when opening one failed (synchronous; must not block or raise)."""

    async def checkout(self, peer: str) -> tuple[FramedStream, bool]:
        """A stream to ``peer``: the newest idle one if fresh enough, else a new one.
        ``(stream, reused)``; raises PeerTimeout or DialError when none can be opened."""
        idle = self.idle.get(peer)
        now = trio.current_time()
        while idle:
            since, fs = idle.pop()
            if now - since < self.idle_s:
                return fs, True
            with trio.CancelScope(shield=True):
                await fs.aclose()
        try:
            fs = await open_framed(self.transport, peer, self.protocol, connect_s=self.connect_s, max_frame=self.max_frame)
        except TransportError as exc:
            if self.on_open is not None:
                self.on_open(peer, exc)
            raise
        self.opened += 1
        if self.on_open is not None:
            self.on_open(peer, None)
        return fs, False

    async def checkin(self, peer: str, fs: FramedStream) -> None:
        """Keep ``fs`` (its exchange ended cleanly) for the next exchange with ``peer``."""
        idle = self.idle.setdefault(peer, [])
        if fs.buffered or len(idle) >= self.max_per_peer:
            with trio.CancelScope(shield=True):
                await fs.aclose()
            return
        idle.append((trio.current_time(), fs))

    async def close_idle(self, older_than: float, peer: str | None = None) -> None:
        """Close idle streams older than ``older_than`` seconds (of ``peer``, or all)."""
        now = trio.current_time()
        for p in [peer] if peer is not None else list(self.idle):
            idle = self.idle.get(p, [])
            keep = [(t, fs) for t, fs in idle if now - t < older_than]
            drop = [fs for t, fs in idle if now - t >= older_than]
            if keep:
                self.idle[p] = keep
            else:
                self.idle.pop(p, None)
            for fs in drop:
                await fs.aclose()
