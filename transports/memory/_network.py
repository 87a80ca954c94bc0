"""In-process transport: many nodes in one trio run, simulated latency, loss and partitions.

A :class:`MemoryNetwork` is a virtual network; ``network.open_transport(signer)`` yields a
:class:`MemoryTransport` that satisfies :class:`p2pserve.transport.Transport` and passes
``p2pserve.testing.transport_suite``. Everything is driven by trio's clock
(``trio.current_time``, deadlines), so it runs under ``MockClock(autojump_threshold=0)``:
the simulator and tests run hundreds of nodes in virtual time.

Model and invariants:

* **Links.** Each ordered pair of peers has a :class:`LinkSpec` (one-way ``latency`` seconds,
  uniform extra ``jitter`` in ``[0, jitter)``, pubsub ``loss`` probability): an explicit
  :meth:`MemoryNetwork.set_link`, else ``link_model(src, dst)``, else the network defaults.
  Specs are read at send time, so changing them affects what is sent afterwards.
* **Determinism.** Loss and jitter draws are hashes of ``(seed, message or stream id,
  link)``, not draws from a shared RNG, so they do not depend on trio's task scheduling
  order: the same seed and the same sends give the same drops and delays.

Where the rest lives: ``_streams`` (:class:`MemoryStream` and its pipes: stream
timing, back pressure, resets), ``_queues`` (:class:`MemorySubscription` and the
peer-event iterators), ``_transport`` (:class:`MemoryTransport`: dialing, handlers,
gossip, vanishing), ``_timers`` (deadlines the pubsub pumps share). This module owns the
network: links, partitions and membership.

Addresses are ``/memory/<n>/p2p/<peer id>``, ``n`` unique per transport instance in the
network (a restarted peer gets a new ``n``). Peer IDs are any strings (normally a
:class:`~p2pserve.crypto.Signer`'s ``peer_id``).
"""

from __future__ import annotations

import itertools
import random
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from p2pserve.crypto import Signer
from p2pserve.errors import DialError, TransportError
from p2pserve.net.caps import DEFAULT_STREAM_CAPS, StreamCaps
from p2pserve.transport import PeerEvent
from transports.memory._queues import MemorySubscription
from transports.memory._streams import MemoryStream, _Pipe
from transports.memory._timers import SharedTimers
from transports.memory._transport import MemoryTransport

__all__ = ["LinkSpec", "MemoryNetwork", "MemoryStream", "MemorySubscription", "MemoryTransport"]


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """The behaviour of one direction of a link."""

    latency: float = 0.0
    """One-way delay in seconds."""
    jitter: float = 0.0
    """Extra delay drawn uniformly from ``[0, jitter)`` per message (streams stay ordered)."""
    loss: float = 0.0
    """Probability that one pubsub hop is dropped. Streams are reliable and never lose data."""

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"invalid link spec {self!r}")


class MemoryNetwork:
    """A virtual network of :class:`MemoryTransport` endpoints (see the module docstring).

    ``seed`` fixes every loss and jitter draw. ``stream_window`` bounds unread bytes per
    stream direction. ``dial_timeout`` is how long a dial or stream open across a partition
    waits for a heal before raising DialError. ``seen_ttl`` is how long pubsub message ids
    are remembered for dedupe. ``subscription_buffer`` bounds each subscription's queue
    (further messages are dropped, as gossipsub does for slow consumers). Pubsub arrival
    times are rounded up to a multiple of ``pubsub_tick`` seconds (0 disables) so that a
    gossip wave is processed in a few scheduler batches instead of one per hop.
    ``stream_caps`` are each transport's caps on inbound streams and buffered bytes
    (:mod:`p2pserve.net.caps`).
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        default_latency: float = 0.0,
        default_jitter: float = 0.0,
        default_loss: float = 0.0,
        link_model: Callable[[str, str], LinkSpec] | None = None,
        relay_unsubscribed: bool = False,
        stream_window: int = 1 << 20,
        dial_timeout: float = 10.0,
        seen_ttl: float = 120.0,
        subscription_buffer: int = 4096,
        pubsub_tick: float = 0.001,
        stream_caps: StreamCaps = DEFAULT_STREAM_CAPS,
    ) -> None:
        self.seed = seed
        self.stream_caps = stream_caps
        self.default_link = LinkSpec(default_latency, default_jitter, default_loss)
        self.link_model = link_model
        self.relay_unsubscribed = relay_unsubscribed
        self.stream_window = stream_window
        self.dial_timeout = dial_timeout
        self.seen_ttl = seen_ttl
        self.subscription_buffer = subscription_buffer
        self.pubsub_tick = pubsub_tick
        self.rng = random.Random(seed)
        """A seeded RNG for callers that want one tied to the network (e.g. topology)."""
        self._links: dict[tuple[str, str], LinkSpec] = {}
        self._alive: dict[str, MemoryTransport] = {}
        self._by_index: dict[int, MemoryTransport] = {}
        self._next_index = itertools.count(1)
        self._index_of: dict[str, int] = {}
        """Each peer ID's listen index: a peer that comes back listens where it did (as a
        restarted node listens on its configured port)."""
        self._cuts: list[tuple[frozenset[str], frozenset[str]]] = []
        self._heal_lot = trio.lowlevel.ParkingLot()
        self._waiting_for_heal: weakref.WeakSet[_Pipe] = weakref.WeakSet()
        self._timers = SharedTimers()  # pumps waiting for the same arrival time share one timeout

    # -- links ---------------------------------------------------------------------------

    def set_link(
        self,
        a: str,
        b: str,
        *,
        latency: float | None = None,
        jitter: float | None = None,
        loss: float | None = None,
        symmetric: bool = True,
    ) -> None:
        """Set the a→b link (and b→a unless ``symmetric=False``); None keeps the current value."""
        pairs = [(a, b), (b, a)] if symmetric else [(a, b)]
        for src, dst in pairs:
            cur = self.link(src, dst)
            self._links[(src, dst)] = LinkSpec(
                cur.latency if latency is None else latency,
                cur.jitter if jitter is None else jitter,
                cur.loss if loss is None else loss,
            )

    def link(self, src: str, dst: str) -> LinkSpec:
        """The spec of the src→dst direction."""
        spec = self._links.get((src, dst))
        if spec is not None:
            return spec
        if self.link_model is not None:
            return self.link_model(src, dst)
        return self.default_link

    def rtt(self, a: str, b: str) -> float:
        """Round-trip time between ``a`` and ``b`` without jitter."""
        return self.link(a, b).latency + self.link(b, a).latency

    # -- partitions ----------------------------------------------------------------------

    def partition(self, group_a: Iterable[str], group_b: Iterable[str], *, disconnect: bool = False) -> None:
        """Cut every link between a peer of ``group_a`` and a peer of ``group_b``.

        Across the cut, pubsub hops are dropped, dials and stream opens wait up to
        ``dial_timeout`` for a heal then raise DialError, and stream data waits for the heal.
        Existing connections stay up (as TCP does until a keepalive gives up) unless
        ``disconnect=True``, which closes them now: both sides get disconnect events and
        their streams across the cut raise ConnectionBroken.
        """
        a, b = frozenset(group_a), frozenset(group_b)
        if a & b:
            raise ValueError("partition groups overlap")
        self._cuts.append((a, b))
        if disconnect:
            for pid in a:
                t = self._alive.get(pid)
                if t is None:
                    continue
                for other in list(t._peers):
                    if other in b:
                        self._link_down(pid, other)

    def heal(self) -> None:
        """Remove every partition; held stream data flows again. Dropped connections stay dropped."""
        self._cuts.clear()
        self._heal_lot.unpark_all()
        for pipe in list(self._waiting_for_heal):
            pipe.lot.unpark_all()

    def blocked(self, a: str, b: str) -> bool:
        """True if a partition separates ``a`` and ``b``."""
        for x, y in self._cuts:
            if (a in x and b in y) or (a in y and b in x):
                return True
        return False

    async def _wait_unblocked(self, a: str, b: str) -> None:
        if not self.blocked(a, b):
            return
        with trio.move_on_after(self.dial_timeout):
            while self.blocked(a, b):
                await self._heal_lot.park()
        if self.blocked(a, b):
            raise DialError(f"{b} is unreachable from {a} (network partition)")

    # -- membership ----------------------------------------------------------------------

    def transport(self, peer_id: str) -> MemoryTransport | None:
        """The live transport of ``peer_id``, if any."""
        return self._alive.get(peer_id)

    def peers(self) -> list[str]:
        """Peer IDs of every live transport, in start order."""
        return list(self._alive)

    @asynccontextmanager
    async def open_transport(self, identity: Signer | str) -> AsyncIterator[MemoryTransport]:
        """Start a transport for ``identity`` (a Signer or a peer ID) on this network.

        Leaving the context is :meth:`MemoryTransport.kill`. Raises TransportError if that
        peer ID already has a live transport here.
        """
        peer_id = identity.peer_id if isinstance(identity, Signer) else identity
        if peer_id in self._alive:
            raise TransportError(f"peer {peer_id} already has a live transport on this network")
        async with trio.open_nursery() as nursery:
            index = self._index_of.get(peer_id)
            if index is None:
                index = self._index_of[peer_id] = next(self._next_index)
            t = MemoryTransport(self, peer_id, index, nursery)
            self._alive[peer_id] = t
            self._by_index[t.index] = t
            nursery.start_soon(t._pump)
            try:
                yield t
            finally:
                t.kill()

    def _link_up(self, a: MemoryTransport, b: MemoryTransport) -> None:
        for x, y in ((a, b), (b, a)):
            x._peers.add(y.peer_id)
            x._known.add(y.peer_id)
            x._emit(PeerEvent(y.peer_id, True))

    def _link_down(self, a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            t = self._alive.get(x)
            if t is None or y not in t._peers:
                continue
            t._peers.discard(y)
            for s in list(t._streams_by_peer.get(y, ())):
                s._break()
            t._emit(PeerEvent(y, False))

    def _forget(self, t: MemoryTransport) -> None:
        if self._alive.get(t.peer_id) is t:
            del self._alive[t.peer_id]
        self._by_index.pop(t.index, None)
