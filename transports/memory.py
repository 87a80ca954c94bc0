"""In-process transport: many nodes in one trio run, simulated latency, loss and partitions.

A :class:`MemoryNetwork` is a virtual network; ``network.open_transport(signer)`` yields a
:class:`MemoryTransport` that satisfies :class:`p2pserve.transport.Transport` and passes
``tests/transport_conformance.py``. Everything is driven by trio's clock
(``trio.current_time``, deadlines), so it runs under ``MockClock(autojump_threshold=0)``:
the simulator and tests run hundreds of nodes in virtual time.

Model and invariants:

* **Links.** Each ordered pair of peers has a :class:`LinkSpec` (one-way ``latency`` seconds,
  uniform extra ``jitter`` in ``[0, jitter)``, pubsub ``loss`` probability): an explicit
  :meth:`MemoryNetwork.set_link`, else ``link_model(src, dst)``, else the network defaults.
  Specs are read at send time, so changing them affects what is sent afterwards.
* **Streams are reliable and ordered** (like TCP over the link). Each direction is a
  timestamped delivery queue: a write is stamped ``max(now + latency + jitter, previous
  stamp)`` and becomes readable at that time, so writes never wait behind sleeps and order is
  kept per stream. A writer waits only when ``stream_window`` bytes are unread (back
  pressure). Opening a stream or dialing costs one round trip. Data and end-of-stream queued
  across a partition wait for :meth:`MemoryNetwork.heal` (TCP retransmits); a reset is
  always seen.
* **Vanishing.** :meth:`MemoryTransport.kill` (and leaving the context, which is the same
  thing) removes the peer: every stream of its peers with it raises ``ConnectionBroken`` on
  receive (after the data already in flight) and on send, its peers get a disconnect
  ``PeerEvent``, its addresses stop dialing, pubsub stops reaching it, and its own
  handlers are cancelled. Its own streams then raise ``StreamClosed``.
* **Pubsub is gossip with per-hop latency.** A published message gets the id
  ``(origin, seq)``; the origin runs its own validators, delivers locally and sends it to
  every connected peer. A peer that receives it (a) drops it if it saw that id in the last
  ``seen_ttl`` seconds, if the link is partitioned, or if it is not subscribed to the topic
  (gossipsub meshes are per topic; ``relay_unsubscribed=True`` makes every peer relay),
  (b) runs the validators of all its subscriptions on the topic: a rejection means neither
  delivered nor relayed, (c) delivers it to its subscriptions and forwards it to its other
  connected peers. Each hop is lost with the link's ``loss`` probability. ``from_peer`` is
  always the origin. For speed, (a) is checked when sending, not on arrival: a copy is not
  sent to a peer that already has the message or a copy on its way (first sent, first
  kept), that is not subscribed, or that is across a partition; arrival times are rounded
  up to ``pubsub_tick``.
* **Determinism.** Loss and jitter draws are hashes of ``(seed, message or stream id,
  link)``, not draws from a shared RNG, so they do not depend on trio's task scheduling
  order: the same seed and the same sends give the same drops and delays.
* **Handlers** run in the transport's nursery. An exception is logged and the stream reset
  (the remote sees ``ConnectionBroken``); a normal return closes the stream. Nothing a
  handler does takes the transport down.
* Per transport, one task (the pubsub pump) plus one per running handler; no task per
  stream or per link, so 200 transports in one process are cheap.

Addresses are ``/memory/<n>/p2p/<peer id>``, ``n`` unique per transport instance in the
network (a restarted peer gets a new ``n``). Peer IDs are any strings (normally a
:class:`~p2pserve.crypto.Signer`'s ``peer_id``).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import math
import random
import re
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import trio

from p2pserve.crypto import Signer
from p2pserve.errors import ConnectionBroken, DialError, StreamClosed, TransportError
from p2pserve.transport import PeerEvent, PubsubMessage, Stream, StreamHandler, Validator

__all__ = ["LinkSpec", "MemoryNetwork", "MemoryStream", "MemorySubscription", "MemoryTransport"]

log = logging.getLogger(__name__)

_ADDR_RE: Final = re.compile(r"/memory/(\d+)/p2p/([^/\s]+)")
_DATA, _EOF, _RESET = 0, 1, 2
_DEFAULT_RECEIVE = 256 * 1024


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


def _unit_draws(*parts: object) -> tuple[float, float]:
    """Two uniform floats in [0, 1) derived from ``parts`` (deterministic, order-free)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest()
    return int.from_bytes(h[:8], "big") / 2**64, int.from_bytes(h[8:], "big") / 2**64


class MemoryNetwork:
    """A virtual network of :class:`MemoryTransport` endpoints (see the module docstring).

    ``seed`` fixes every loss and jitter draw. ``stream_window`` bounds unread bytes per
    stream direction. ``dial_timeout`` is how long a dial or stream open across a partition
    waits for a heal before raising DialError. ``seen_ttl`` is how long pubsub message ids
    are remembered for dedupe. ``subscription_buffer`` bounds each subscription's queue
    (further messages are dropped, as gossipsub does for slow consumers). Pubsub arrival
    times are rounded up to a multiple of ``pubsub_tick`` seconds (0 disables) so that a
    gossip wave is processed in a few scheduler batches instead of one per hop.
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
    ) -> None:
        self.seed = seed
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
        self._cuts: list[tuple[frozenset[str], frozenset[str]]] = []
        self._heal_lot = trio.lowlevel.ParkingLot()
        self._waiting_for_heal: weakref.WeakSet[_Pipe] = weakref.WeakSet()

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
            t = MemoryTransport(self, peer_id, next(self._next_index), nursery)
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

    __slots__ = ("_closed", "_in", "_out", "_transport", "remote_peer")

    def __init__(self, transport: MemoryTransport, remote_peer: str, inbound: _Pipe, outbound: _Pipe) -> None:
        self._transport = transport
        self.remote_peer = remote_peer
        self._in = inbound
        self._out = outbound
        self._closed = False

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
        self._in.reader_gone = True
        self._in.items.clear()
        self._in.buffered = 0
        for pipe in (self._in, self._out):
            pipe.lot.unpark_all()
            pipe.space_lot.unpark_all()
        self._transport._unregister(self)


class MemorySubscription:
    """A bounded queue of one topic's messages for one subscriber."""

    __slots__ = ("_closed", "_items", "_lot", "_transport", "topic", "validator")

    def __init__(self, transport: MemoryTransport, topic: str, validator: Validator | None) -> None:
        self._transport = transport
        self.topic = topic
        self.validator = validator
        self._items: deque[PubsubMessage] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def _push(self, msg: PubsubMessage) -> None:
        if len(self._items) >= self._transport.network.subscription_buffer:
            log.debug("subscription %s on %s full; dropping a message", self.topic, self._transport.peer_id)
            return
        self._items.append(msg)
        self._lot.unpark_all()

    def __aiter__(self) -> MemorySubscription:
        return self

    async def __anext__(self) -> PubsubMessage:
        await trio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()
        return self._items.popleft()

    def _end(self) -> None:
        self._closed = True
        self._items.clear()
        self._lot.unpark_all()

    async def aclose(self) -> None:
        """Stop delivery; pending and later messages are discarded. Idempotent."""
        self._transport._unsubscribe(self)
        self._end()
        await trio.lowlevel.checkpoint()


class _PeerEvents:
    """A live iterator of peer events; ends when the transport closes."""

    __slots__ = ("__weakref__", "_closed", "_items", "_lot")

    def __init__(self) -> None:
        self._items: deque[PeerEvent] = deque(maxlen=4096)
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def _push(self, ev: PeerEvent) -> None:
        self._items.append(ev)
        self._lot.unpark_all()

    def _end(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    def __aiter__(self) -> _PeerEvents:
        return self

    async def __anext__(self) -> PeerEvent:
        await trio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()
        return self._items.popleft()

    async def aclose(self) -> None:
        self._end()
        await trio.lowlevel.checkpoint()


_Msg = tuple[float, int, tuple[str, int], PubsubMessage, str]


class MemoryTransport:
    """One endpoint on a :class:`MemoryNetwork`; obtain it from ``network.open_transport``."""

    def __init__(self, network: MemoryNetwork, peer_id: str, index: int, nursery: trio.Nursery) -> None:
        self.network = network
        self._peer_id = peer_id
        self.index = index
        self._nursery = nursery
        self._closed = False
        self._peers: set[str] = set()
        self._known: set[str] = set()
        self._handlers: dict[str, StreamHandler] = {}
        self._streams_by_peer: dict[str, set[MemoryStream]] = {}
        self._stream_counter = itertools.count()
        self._events: weakref.WeakSet[_PeerEvents] = weakref.WeakSet()
        self._subs: dict[str, list[MemorySubscription]] = {}
        self._pub_seq = itertools.count(1)
        self._inbox: list[_Msg] = []
        self._inbox_counter = itertools.count()
        self._inbox_lot = trio.lowlevel.ParkingLot()
        self._pending: dict[tuple[str, int], float] = {}
        self._seen: set[tuple[str, int]] = set()
        self._seen_order: deque[tuple[float, tuple[str, int]]] = deque()

    # -- identity and connections ----------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def closed(self) -> bool:
        return self._closed

    def listen_addrs(self) -> list[str]:
        return [f"/memory/{self.index}/p2p/{self._peer_id}"]

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed(f"transport {self._peer_id} is closed")

    async def connect(self, addr: str) -> str:
        """Connect to ``addr``; idempotent. Costs one RTT. Raises DialError."""
        self._check_open()
        m = _ADDR_RE.fullmatch(addr)
        if m is None:
            raise DialError(f"not a dialable memory address ending in /p2p/<id>: {addr!r:.200}")
        index, peer_id = int(m.group(1)), m.group(2)
        if peer_id == self._peer_id:
            raise DialError("cannot dial ourselves")
        if peer_id in self._peers:
            await trio.lowlevel.checkpoint()
            return peer_id
        target = self._dial_target(index, peer_id, addr)
        await self.network._wait_unblocked(self._peer_id, peer_id)
        rtt = self.network.rtt(self._peer_id, peer_id)
        if rtt:
            await trio.sleep(rtt)
        else:
            await trio.lowlevel.checkpoint()
        self._check_open()
        target = self._dial_target(index, peer_id, addr)
        if peer_id not in self._peers:
            self.network._link_up(self, target)
        return peer_id

    def _dial_target(self, index: int, peer_id: str, addr: str) -> MemoryTransport:
        target = self.network._by_index.get(index)
        if target is None or target.closed:
            raise DialError(f"nothing listens at {addr}")
        if target.peer_id != peer_id:
            raise DialError(f"peer at {addr} is {target.peer_id}, not {peer_id}")
        return target

    def disconnect(self, peer_id: str) -> None:
        """Close the connection to ``peer_id`` (memory-only): both sides get a disconnect
        event and their streams with each other are reset."""
        self.network._link_down(self._peer_id, peer_id)

    def connected_peers(self) -> set[str]:
        return set(self._peers)

    def peer_events(self) -> AsyncIterator[PeerEvent]:
        """Connect/disconnect events from now on (bounded: the oldest of 4096 unread drop)."""
        it = _PeerEvents()
        if self._closed:
            it._end()
        else:
            self._events.add(it)
        return it

    def _emit(self, ev: PeerEvent) -> None:
        for it in list(self._events):
            it._push(ev)

    # -- streams ---------------------------------------------------------------------------

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        self._handlers[protocol] = handler

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        """Open a stream (dialing a known peer if needed); costs one RTT. Raises DialError."""
        self._check_open()
        network = self.network
        if peer_id not in self._peers:
            known = network.transport(peer_id)
            if peer_id not in self._known or known is None:
                raise DialError(f"no connection to {peer_id} and no known address")
            await self.connect(known.listen_addrs()[0])
        await network._wait_unblocked(self._peer_id, peer_id)
        rtt = network.rtt(self._peer_id, peer_id)
        if rtt:
            await trio.sleep(rtt)
        else:
            await trio.lowlevel.checkpoint()
        self._check_open()
        target = network.transport(peer_id)
        if target is None or peer_id not in self._peers:
            raise DialError(f"{peer_id} went away while opening a stream")
        handler = target._handlers.get(protocol)
        if handler is None:
            raise DialError(f"{peer_id} does not support protocol {protocol}")
        n = next(self._stream_counter)
        fwd = _Pipe(self._peer_id, peer_id, random.Random(f"{network.seed}|{self._peer_id}|{n}|>"))
        back = _Pipe(peer_id, self._peer_id, random.Random(f"{network.seed}|{self._peer_id}|{n}|<"))
        local = MemoryStream(self, peer_id, back, fwd)
        remote = MemoryStream(target, self._peer_id, fwd, back)
        self._register(local)
        target._register(remote)
        target._nursery.start_soon(target._run_handler, handler, remote, protocol)
        return local

    def _register(self, s: MemoryStream) -> None:
        self._streams_by_peer.setdefault(s.remote_peer, set()).add(s)

    def _unregister(self, s: MemoryStream) -> None:
        streams = self._streams_by_peer.get(s.remote_peer)
        if streams is not None:
            streams.discard(s)
            if not streams:
                del self._streams_by_peer[s.remote_peer]

    async def _run_handler(self, handler: StreamHandler, stream: MemoryStream, protocol: str) -> None:
        try:
            await handler(stream)
        except Exception:
            log.exception("handler for %s from %s failed; resetting the stream", protocol, stream.remote_peer)
            stream._reset("handler failed")
        else:
            stream._close_quietly()

    # -- pubsub ----------------------------------------------------------------------------

    async def subscribe(self, topic: str, validator: Validator | None = None) -> MemorySubscription:
        self._check_open()
        sub = MemorySubscription(self, topic, validator)
        self._subs.setdefault(topic, []).append(sub)
        await trio.lowlevel.checkpoint()
        return sub

    def _unsubscribe(self, sub: MemorySubscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[sub.topic]

    async def publish(self, topic: str, data: bytes) -> None:
        """Validate with our own validators, deliver locally, send to every connected peer."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        mid = (self._peer_id, next(self._pub_seq))
        self._mark_seen(mid)
        msg = PubsubMessage(topic, self._peer_id, bytes(data))
        if not self._validate(msg):
            log.debug("own message on %s rejected by a local validator", topic)
            return
        self._deliver(msg)
        self._forward(mid, msg, exclude=None)

    def _validate(self, msg: PubsubMessage) -> bool:
        for sub in self._subs.get(msg.topic, ()):
            if sub.validator is None:
                continue
            try:
                ok = sub.validator(msg)
            except Exception:
                log.exception("validator on %s raised; rejecting the message", msg.topic)
                return False
            if not ok:
                return False
        return True

    def _deliver(self, msg: PubsubMessage) -> None:
        for sub in list(self._subs.get(msg.topic, ())):
            sub._push(msg)

    def _forward(self, mid: tuple[str, int], msg: PubsubMessage, exclude: str | None) -> None:
        network = self.network
        now = trio.current_time()
        relay_all = network.relay_unsubscribed
        tick = network.pubsub_tick
        for peer in self._peers:
            if peer == exclude:
                continue
            target = network._alive.get(peer)
            if target is None or mid in target._seen or mid in target._pending:
                continue  # it has the message or a copy on its way (first sent, first kept)
            if not relay_all and msg.topic not in target._subs:
                continue  # gossipsub only sends a topic to peers subscribed to it
            if network._cuts and network.blocked(self._peer_id, peer):
                continue
            spec = network.link(self._peer_id, peer)
            u_loss, u_jitter = _unit_draws(network.seed, mid[0], mid[1], self._peer_id, peer)
            if u_loss < spec.loss:
                continue
            at = now + spec.latency + u_jitter * spec.jitter
            if tick:
                at = math.ceil(at / tick - 1e-9) * tick
            target._enqueue(at, mid, msg, self._peer_id)

    def _enqueue(self, at: float, mid: tuple[str, int], msg: PubsubMessage, src: str) -> None:
        self._pending[mid] = at
        item = (at, next(self._inbox_counter), mid, msg, src)
        heapq.heappush(self._inbox, item)
        if self._inbox[0] is item:
            self._inbox_lot.unpark_all()

    def _mark_seen(self, mid: tuple[str, int]) -> None:
        now = trio.current_time()
        order = self._seen_order
        while order and order[0][0] <= now:
            self._seen.discard(order.popleft()[1])
        self._seen.add(mid)
        order.append((now + self.network.seen_ttl, mid))

    async def _pump(self) -> None:
        """Deliver and relay inbound pubsub messages when their arrival time comes."""
        inbox = self._inbox
        while True:
            if not inbox:
                await self._inbox_lot.park()
                continue
            now = trio.current_time()
            if inbox[0][0] > now:
                with trio.move_on_at(inbox[0][0]):
                    await self._inbox_lot.park()
                continue
            while inbox and inbox[0][0] <= now:
                _, _, mid, msg, src = heapq.heappop(inbox)
                self._receive(mid, msg, src)

    def _receive(self, mid: tuple[str, int], msg: PubsubMessage, src: str) -> None:
        self._pending.pop(mid, None)
        if self._closed or mid in self._seen:
            return
        if src not in self._peers or self.network.blocked(src, self._peer_id):
            return
        if msg.topic not in self._subs and not self.network.relay_unsubscribed:
            return
        self._mark_seen(mid)
        if not self._validate(msg):
            return
        self._deliver(msg)
        self._forward(mid, msg, exclude=src)

    # -- lifetime --------------------------------------------------------------------------

    def kill(self) -> None:
        """Vanish now (see the module docstring). Idempotent; also what leaving the context does."""
        if self._closed:
            return
        self._closed = True
        network = self.network
        for streams in list(self._streams_by_peer.values()):
            for s in list(streams):
                s._reset("transport closed")
        for peer in list(self._peers):
            network._link_down(self._peer_id, peer)
        network._forget(self)
        for subs in list(self._subs.values()):
            for sub in subs:
                sub._end()
        self._subs.clear()
        for it in list(self._events):
            it._end()
        self._inbox.clear()
        self._pending.clear()
        self._nursery.cancel_scope.cancel()

    def __repr__(self) -> str:
        return f"MemoryTransport({self._peer_id!r}, index={self.index}, peers={len(self._peers)})"
