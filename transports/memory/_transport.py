"""One endpoint on a memory network: :class:`MemoryTransport` (dialing, handlers, gossip).

Invariants:

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
* **Handlers** run in the transport's nursery. An exception is logged and the stream reset
  (the remote sees ``ConnectionBroken``); a normal return closes the stream. Nothing a
  handler does takes the transport down.
* **Stream caps.** Each transport's :class:`~p2pserve.net.guard.StreamGuard` (``guard``,
  caps from the network's ``stream_caps``) admits every inbound stream before its handler
  runs (a refused one is reset) and meters every stream's buffered bytes; the handlers of a
  peer cut off are cancelled and their streams reset, and opening a stream to it raises
  DialError while it lasts.
* Per transport, one task (the pubsub pump) plus one per running handler; no task per
  stream or per link, so 200 transports in one process are cheap.
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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import trio

from p2pserve.errors import DialError, StreamClosed
from p2pserve.net.guard import StreamGuard
from p2pserve.transport import PeerEvent, PubsubMessage, Stream, StreamHandler, Validator
from transports.memory._queues import MemorySubscription, _PeerEvents
from transports.memory._streams import MemoryStream, _Pipe

if TYPE_CHECKING:
    from transports.memory import MemoryNetwork

__all__ = ["MemoryTransport"]

log = logging.getLogger("transports.memory")  # the public module's name: what applications configure

_ADDR_RE: Final = re.compile(r"/memory/(\d+)/p2p/([^/\s]+)")


def _unit_draws(*parts: object) -> tuple[float, float]:
    """Two uniform floats in [0, 1) derived from ``parts`` (deterministic, order-free)."""
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest()
    return int.from_bytes(h[:8], "big") / 2**64, int.from_bytes(h[8:], "big") / 2**64


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
        self.guard = StreamGuard(network.stream_caps)
        """This node's stream caps (see the module docstring)."""
        self._streams_by_peer: dict[str, set[MemoryStream]] = {}
        self._stream_counter = itertools.count()
        self._events: weakref.WeakSet[_PeerEvents] = weakref.WeakSet()
        self._subs: dict[str, list[MemorySubscription]] = {}
        # message ids are (origin, seq); a restarted peer gets a new index, so its ids never
        # collide with those of its previous run that peers still remember (as libp2p's
        # seqno, which starts from the clock, does not either)
        self._pub_seq = itertools.count(index << 40)
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
        if self.guard.refusing(peer_id):
            raise DialError(f"{peer_id} is cut off: it went over its stream caps")
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
        local.meter = self.guard.meter(peer_id)
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
        ticket = self.guard.admit(stream.remote_peer)
        if ticket is None:
            stream._reset("refused: over the stream caps")
            return
        stream.meter = ticket.meter
        try:
            with ticket.scope:
                await handler(stream)
        except Exception:
            log.exception("handler for %s from %s failed; resetting the stream", protocol, stream.remote_peer)
            stream._reset("handler failed")
        else:
            if ticket.cut_off:
                stream._reset("its peer was cut off: over the stream caps")
            else:
                stream._close_quietly()
        finally:
            ticket.close()

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
        now = trio.current_time()
        self._mark_seen(mid, now)
        msg = PubsubMessage(topic, self._peer_id, bytes(data))
        if not self._validate(msg):
            log.debug("own message on %s rejected by a local validator", topic)
            return
        self._deliver(msg)
        self._forward(mid, msg, None, now)

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

    def _forward(self, mid: tuple[str, int], msg: PubsubMessage, exclude: str | None, now: float) -> None:
        network = self.network
        alive = network._alive
        relay_all = network.relay_unsubscribed
        tick = network.pubsub_tick
        # every link is the default one unless links were set or a model given: skip the lookups
        uniform = network.default_link if not network._links and network.link_model is None else None
        for peer in self._peers:
            if peer == exclude:
                continue
            target = alive.get(peer)
            if target is None or mid in target._seen or mid in target._pending:
                continue  # it has the message or a copy on its way (first sent, first kept)
            if not relay_all and msg.topic not in target._subs:
                continue  # gossipsub only sends a topic to peers subscribed to it
            if network._cuts and network.blocked(self._peer_id, peer):
                continue
            spec = uniform if uniform is not None else network.link(self._peer_id, peer)
            at = now + spec.latency
            if spec.loss or spec.jitter:  # the draws are hashes, so skipping unused ones changes nothing
                u_loss, u_jitter = _unit_draws(network.seed, mid[0], mid[1], self._peer_id, peer)
                if u_loss < spec.loss:
                    continue
                at += u_jitter * spec.jitter
            if tick:
                at = math.ceil(at / tick - 1e-9) * tick
            target._enqueue(at, mid, msg, self._peer_id)

    def _enqueue(self, at: float, mid: tuple[str, int], msg: PubsubMessage, src: str) -> None:
        self._pending[mid] = at
        item = (at, next(self._inbox_counter), mid, msg, src)
        heapq.heappush(self._inbox, item)
        if self._inbox[0] is item:
            self._inbox_lot.unpark_all()

    def _mark_seen(self, mid: tuple[str, int], now: float) -> None:
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
            if inbox[0][0] > now:  # woken at that time, or by _enqueue with an earlier arrival
                await self.network._timers.wait(inbox[0][0], self._inbox_lot)
                continue
            while inbox and inbox[0][0] <= now:
                _, _, mid, msg, src = heapq.heappop(inbox)
                self._receive(mid, msg, src, now)

    def _receive(self, mid: tuple[str, int], msg: PubsubMessage, src: str, now: float) -> None:
        self._pending.pop(mid, None)
        if self._closed or mid in self._seen:
            return
        if src not in self._peers or (self.network._cuts and self.network.blocked(src, self._peer_id)):
            return
        if msg.topic not in self._subs and not self.network.relay_unsubscribed:
            return
        self._mark_seen(mid, now)
        if not self._validate(msg):
            return
        self._deliver(msg)
        self._forward(mid, msg, src, now)

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
