"""The async shell of the stream caps: admits inbound streams, meters every stream's
buffered bytes and cuts off peers over their caps. The counting and the decisions are the
pure :class:`~p2pserve.net.caps.CapLedger`; this module only acts on them.

Each transport owns one :class:`StreamGuard` (one per node) and runs every stream through it
(see the contract in :mod:`p2pserve.transport`):

* an inbound stream gets a :class:`Ticket` from :meth:`StreamGuard.admit` (or None: the
  transport resets it) whose ``scope`` the transport runs the handler in and whose
  :meth:`Ticket.close` it calls when the handler ends;
* a stream we open gets a :class:`Meter` from :meth:`StreamGuard.meter` (after
  :meth:`StreamGuard.refusing` said the peer is not cut off), closed with the stream;
* the frame reader (:class:`~p2pserve.net.framed.FramedStream`) reports what it holds
  through ``stream.meter``; a charge that the ledger refuses fails that stream, and every
  peer it cut off has its handlers cancelled.

A cut-off is logged as an offence of its peer, at most once per peer every
``OffenceLog.every_s`` (:class:`~p2pserve.membership.ratelimit.OffenceLog`); refusals while
it lasts are counted, not logged.
"""

from __future__ import annotations

import logging

import trio

from p2pserve.membership.ratelimit import OffenceLog
from p2pserve.net.caps import DEFAULT_STREAM_CAPS, Admission, CapLedger, StreamCaps

__all__ = ["Meter", "StreamGuard", "Ticket"]

log = logging.getLogger(__name__)

OFFENCE = "stream-caps"
"""The offence log's kind for a peer over its stream caps."""


class Meter:
    """One stream's buffered bytes, charged to its peer (a :class:`~p2pserve.transport.BufferMeter`)."""

    __slots__ = ("_guard", "closed", "held", "peer")

    def __init__(self, guard: StreamGuard, peer: str) -> None:
        self._guard = guard
        self.peer = peer
        self.held = 0
        self.closed = False

    def hold(self, n: int) -> bool:
        """The stream's reader now holds ``n`` bytes; False when that is over the caps."""
        delta = n - self.held
        if delta == 0:
            return True
        if self.closed:  # the stream was closed under its reader: nothing may be held any more
            return n == 0
        self.held = n
        guard = self._guard
        now = trio.current_time()
        if delta < 0:
            guard.ledger.release(self.peer, -delta, now)
            return True
        charged = guard.ledger.charge(self.peer, delta, now)
        if charged.cut:
            guard.cut_off(charged.cut, "buffered bytes over its caps")
        return charged.ok

    def close(self) -> None:
        """Release everything; idempotent."""
        self.hold(0)
        self.closed = True


class Ticket:
    """One admitted inbound stream: its handler's cancel scope and its meter."""

    __slots__ = ("_guard", "_open", "meter", "peer", "scope")

    def __init__(self, guard: StreamGuard, peer: str) -> None:
        self._guard = guard
        self.peer = peer
        self.scope = trio.CancelScope()
        self.meter = Meter(guard, peer)
        self._open = True

    @property
    def cut_off(self) -> bool:
        """Its handler was cancelled because its peer was cut off."""
        return self.scope.cancel_called

    def close(self) -> None:
        """The handler ended: release the stream's count and bytes. Idempotent."""
        if not self._open:
            return
        self._open = False
        self.meter.close()
        guard = self._guard
        scopes = guard._scopes.get(self.peer)
        if scopes is not None:
            scopes.discard(self.scope)
            if not scopes:
                del guard._scopes[self.peer]
        guard.ledger.close(self.peer, trio.current_time())


class StreamGuard:
    """Stream caps for one node (see the module docstring)."""

    def __init__(self, caps: StreamCaps = DEFAULT_STREAM_CAPS, *, offences: OffenceLog | None = None) -> None:
        self.ledger = CapLedger(caps)
        self.offences = offences if offences is not None else OffenceLog()
        self._scopes: dict[str, set[trio.CancelScope]] = {}

    @property
    def caps(self) -> StreamCaps:
        return self.ledger.caps

    def admit(self, peer: str) -> Ticket | None:
        """A ticket for a stream ``peer`` opened to us, or None: reset the stream."""
        verdict = self.ledger.open(peer, trio.current_time())
        if verdict is Admission.OPEN:
            ticket = Ticket(self, peer)
            self._scopes.setdefault(peer, set()).add(ticket.scope)
            return ticket
        if verdict is Admission.PEER_STREAMS:
            self.cut_off((peer,), f"over {self.caps.max_streams_per_peer} open streams")
        elif verdict is Admission.NODE_STREAMS and self.offences.record("*", "node-streams", trio.current_time()):
            log.warning("refusing new streams: this node holds %d inbound streams (max_streams)", self.ledger.streams)
        return None

    def meter(self, peer: str) -> Meter:
        """A meter for a stream we opened to ``peer``."""
        return Meter(self, peer)

    def refusing(self, peer: str) -> bool:
        """Whether ``peer`` is cut off now."""
        return self.ledger.refusing(peer, trio.current_time())

    def cut_off(self, peers: tuple[str, ...], why: str) -> None:
        """Cancel the handlers of ``peers`` (the ledger already cut them off) and log it."""
        now = trio.current_time()
        for peer in peers:
            streams, held = self.ledger.usage(peer)
            for scope in self._scopes.get(peer, ()):
                scope.cancel()
            covered = self.offences.record(peer, OFFENCE, now)
            if covered is not None:
                log.warning(
                    "peer %s cut off (%s: %d streams, %d bytes held; %d time(s) since last logged): "
                    "its streams closed, new ones refused for %.0f s",
                    peer, why, streams, held, covered, self.caps.cutoff_s,
                )
