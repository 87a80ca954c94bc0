"""Aggregate caps on what peers can make this node hold in open streams: the accounting.

Pure logic: no I/O, no clock (``now`` is an argument, in seconds of trio's clock). The
async shell is :class:`p2pserve.net.guard.StreamGuard`, which the transports run every
inbound stream through.

A frame may be up to ``max_frame`` (4 MiB) long, and a frame decoder holds the bytes of a
frame until it is complete, so without an aggregate bound a peer that opens many streams,
sends most of a large frame on each and stalls makes the node hold ``streams x max_frame``
bytes for as long as its handlers wait (the issue measured 400 streams: 1.66 GB of RSS).
:class:`CapLedger` counts, per peer and for the whole node:

* **open inbound streams** (a stream a peer opened to us, from the transport's admission to
  the end of its handler): at most ``max_streams_per_peer`` per peer and ``max_streams`` in all;
* **buffered bytes** (received by a frame decoder and not yet returned as a message, on a
  stream in either direction): at most ``max_buffered_per_peer`` per peer and
  ``max_buffered`` in all.

Rules:

* a peer over one of *its* caps is **cut off**: its streams are to be closed, its held bytes
  no longer count against the node (they are being freed), and for ``cutoff_s`` seconds its
  new streams are refused and its streams' new bytes too;
* a stream that would take the node over ``max_streams`` is refused, and nobody is cut off
  (many peers together are not one peer's fault);
* bytes that take the node over ``max_buffered`` cut off the peer that holds the most (a
  peer stalling on large partial frames, not the honest peers whose frames complete as they
  arrive); the charge fails only if that peer is the one charging.

Every count is released exactly once by its owner (a stream's meter, a handler's end), so
the totals return to zero when every stream is closed. Memory is bounded: a record is kept
only while its peer holds something, or is cut off (at most ``max_remembered`` of those;
the one whose cut-off ends first is forgotten first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DEFAULT_STREAM_CAPS", "Admission", "CapLedger", "Charged", "StreamCaps"]

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class StreamCaps:
    """The caps. The defaults are sized so honest use never meets them: an honest frame
    completes as it arrives (its bytes are held for the time it takes to receive), so 64 MiB
    per peer is sixteen frames of the largest size in flight at once from one peer, and
    1024 streams per peer is four times what one yamux connection lets a peer open (256)."""

    max_streams_per_peer: int = 1024
    """Inbound streams one peer may hold open at once."""
    max_streams: int = 8192
    """Inbound streams all peers together may hold open at once."""
    max_buffered_per_peer: int = 64 * _MIB
    """Bytes of incomplete (or unread) frames one peer's streams may hold; at least one
    largest frame (``Limits.max_frame``, 4 MiB)."""
    max_buffered: int = 256 * _MIB
    """Bytes of incomplete (or unread) frames all streams together may hold."""
    cutoff_s: float = 60.0
    """How long a peer over its caps has its new streams refused."""

    def __post_init__(self) -> None:
        if min(self.max_streams_per_peer, self.max_streams, self.max_buffered_per_peer, self.max_buffered) < 1:
            raise ValueError("stream caps must be at least 1")
        if self.max_streams < self.max_streams_per_peer:
            raise ValueError("max_streams must be at least max_streams_per_peer")
        if self.max_buffered < self.max_buffered_per_peer:
            raise ValueError("max_buffered must be at least max_buffered_per_peer")
        if not self.cutoff_s > 0:
            raise ValueError("cutoff_s must be above 0")


DEFAULT_STREAM_CAPS = StreamCaps()


class Admission(enum.Enum):
    """What :meth:`CapLedger.open` decided about a new inbound stream."""

    OPEN = "open"
    """Admitted: counted until :meth:`CapLedger.close`."""
    CUT_OFF = "cut-off"
    """Refused: its peer is cut off."""
    PEER_STREAMS = "peer-streams"
    """Refused: it would take its peer over ``max_streams_per_peer``; the peer is now cut off."""
    NODE_STREAMS = "node-streams"
    """Refused: the node holds ``max_streams`` inbound streams; nobody is cut off."""


@dataclass(frozen=True, slots=True)
class Charged:
    """What :meth:`CapLedger.charge` decided: ``ok`` (the stream may keep the bytes; if not,
    it drops them, releases them and fails) and ``cut`` (peers cut off by this charge: close
    their streams, log it)."""

    ok: bool
    cut: tuple[str, ...] = ()


@dataclass(slots=True)
class _Usage:
    streams: int = 0
    buffered: int = 0
    cut: bool = False
    """Cut off and still holding something (its bytes are being freed: not counted as live)."""
    until: float = 0.0
    """Its new streams and bytes are refused until then."""


class CapLedger:
    """Per-peer and node-wide counts of inbound streams and buffered bytes (see the module
    docstring). Not thread-safe; owned by one trio task tree."""

    def __init__(self, caps: StreamCaps = DEFAULT_STREAM_CAPS, *, max_remembered: int = 4096) -> None:
        if max_remembered < 1:
            raise ValueError("max_remembered must be at least 1")
        self.caps = caps
        self.max_remembered = max_remembered
        self._usage: dict[str, _Usage] = {}
        self.streams = 0
        """Inbound streams open now."""
        self.buffered = 0
        """Bytes held now (cut-off peers' included, until their streams release them)."""
        self.peak_buffered = 0
        """The most bytes held at once (for tests and metrics)."""
        self.cutoffs = 0
        """Peers cut off so far."""
        self.refused = 0
        """Inbound streams refused so far."""
        self._doomed = 0
        """Bytes held by cut-off peers' streams (being freed)."""

    def __len__(self) -> int:
        return len(self._usage)

    def usage(self, peer: str) -> tuple[int, int]:
        """``(inbound streams, buffered bytes)`` of ``peer`` now."""
        u = self._usage.get(peer)
        return (0, 0) if u is None else (u.streams, u.buffered)

    def refusing(self, peer: str, now: float) -> bool:
        """Whether ``peer`` is cut off (its new streams and bytes are refused)."""
        u = self._usage.get(peer)
        return u is not None and (u.cut or now < u.until)

    def open(self, peer: str, now: float) -> Admission:
        """A peer opened a stream to us: admit it (and count it) or refuse it."""
        if self.refusing(peer, now):
            self.refused += 1
            return Admission.CUT_OFF
        if self.streams >= self.caps.max_streams:
            self.refused += 1
            return Admission.NODE_STREAMS
        u = self._record(peer, now)
        if u.streams >= self.caps.max_streams_per_peer:
            self.refused += 1
            self._cut(u, now)
            return Admission.PEER_STREAMS
        u.streams += 1
        self.streams += 1
        return Admission.OPEN

    def close(self, peer: str, now: float) -> None:
        """An admitted stream's handler ended."""
        u = self._usage.get(peer)
        if u is None or u.streams < 1:
            raise ValueError(f"no open stream of {peer} to close")
        u.streams -= 1
        self.streams -= 1
        self._settle(peer, u, now)

    def charge(self, peer: str, n: int, now: float) -> Charged:
        """A stream of ``peer`` now holds ``n`` more bytes. They are counted whatever the
        answer; the stream releases them (:meth:`release`) when it drops them."""
        if n < 0:
            raise ValueError("charge a positive number of bytes; release the others")
        u = self._record(peer, now)
        u.buffered += n
        self.buffered += n
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        if u.cut:
            self._doomed += n
            return Charged(False)
        if now < u.until:  # cut off earlier (its streams since closed): still refused
            u.cut = True
            self._doomed += u.buffered
            return Charged(False)
        caps = self.caps
        if u.buffered > caps.max_buffered_per_peer:
            self._cut(u, now)
            return Charged(False, (peer,))
        if self.buffered - self._doomed > caps.max_buffered:
            victim = max((p for p, v in self._usage.items() if not v.cut), key=lambda p: (self._usage[p].buffered, p))
            self._cut(self._usage[victim], now)
            return Charged(victim != peer, (victim,))
        return Charged(True)

    def release(self, peer: str, n: int, now: float) -> None:
        """A stream of ``peer`` dropped ``n`` of the bytes it was charged for."""
        u = self._usage.get(peer)
        if u is None or not 0 <= n <= u.buffered:
            raise ValueError(f"{peer} holds {0 if u is None else u.buffered} bytes, cannot release {n}")
        u.buffered -= n
        self.buffered -= n
        if u.cut:
            self._doomed -= n
        self._settle(peer, u, now)

    # --- internals ---------------------------------------------------------------------------

    def _record(self, peer: str, now: float) -> _Usage:
        u = self._usage.get(peer)
        if u is None:
            if len(self._usage) >= self.max_remembered:
                self._forget(now)
            u = self._usage[peer] = _Usage()
        return u

    def _cut(self, u: _Usage, now: float) -> None:
        if not u.cut:
            u.cut = True
            self._doomed += u.buffered
        u.until = max(u.until, now + self.caps.cutoff_s)
        self.cutoffs += 1

    def _settle(self, peer: str, u: _Usage, now: float) -> None:
        """Once a peer holds nothing: its cut-off bytes are all freed; forget it unless refused."""
        if u.streams or u.buffered:
            return
        u.cut = False
        if now >= u.until:
            del self._usage[peer]

    def _forget(self, now: float) -> None:
        """Make room for one record: forget peers that hold nothing, expired cut-offs first,
        then the cut-off that ends first (forgiving, never punishing)."""
        idle = [(u.until, p) for p, u in self._usage.items() if not u.streams and not u.buffered]
        if not idle:
            return  # every record holds a stream or bytes: bounded by the streams themselves
        expired = [p for until, p in idle if until <= now]
        for p in expired:
            del self._usage[p]
        if not expired:
            del self._usage[min(idle)[1]]
