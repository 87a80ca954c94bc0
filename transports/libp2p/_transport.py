"""The running libp2p endpoint: :class:`Libp2pTransport` (connections, streams, pubsub, events).

What this class owns, and its invariants:

* **Translation at the edge.** Every call that reaches into libp2p catches ``Exception``
  and raises a :class:`~p2pserve.errors.TransportError` subclass ``from`` it.
* **Dialing.** The auto-connector is off (node code decides whom to dial); a redial of a
  peer not connected now clears its stale addresses and its 60 s negative dial cache
  entry first.
* **Handlers never kill the host.** libp2p runs each inbound stream in its connection's
  nursery and an escaping exception tears the host down; we only hand the stream over to
  the transport's own nursery, where the user handler runs wrapped: an exception is
  logged and the stream reset; a normal return closes the stream.
* **Closing.** ``_begin_close`` ends every subscription and event iterator; after it every
  method raises StreamClosed. The host itself is run and closed by
  :func:`transports.libp2p.open_libp2p_transport`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Sequence

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pubsub import Pubsub

from p2pserve.errors import DialError, LocalProtocolError, StreamClosed, TransportError
from p2pserve.net.caps import DEFAULT_STREAM_CAPS, StreamCaps
from p2pserve.net.guard import StreamGuard
from p2pserve.transport import PeerEvent, Stream, StreamHandler, Validator
from transports.libp2p._addrs import _interface_ipv4s, _is_quic, _parse_peer_id, _strip_p2p
from transports.libp2p._events import _PeerEventIterator, _PeerNotifee
from transports.libp2p._pubsub import Libp2pSubscription, _drain, _Topic, _topic_validator
from transports.libp2p._setup import log
from transports.libp2p._stream import _STREAM_CLOSE_TIMEOUT, Libp2pStream, _remote_peer

__all__ = ["Libp2pTransport"]


class Libp2pTransport:
    """A running libp2p endpoint implementing :class:`p2pserve.transport.Transport`.

    Obtain one from :func:`open_libp2p_transport`; it is usable only inside that context.
    After the context is left every method raises StreamClosed (``listen_addrs`` and
    ``connected_peers`` return empty results).
    """

    def __init__(
        self,
        host: IHost,
        pubsub: Pubsub,
        *,
        announce_addrs: Sequence[str] | None,
        dial_timeout: float,
        max_pubsub_message: int,
        stream_caps: StreamCaps = DEFAULT_STREAM_CAPS,
    ) -> None:
        self._host = host
        self.guard = StreamGuard(stream_caps)
        """This node's caps on inbound streams and buffered bytes (:mod:`p2pserve.net.guard`)."""
        self._pubsub = pubsub
        self._peer_id = str(host.get_id())
        self._announce = list(announce_addrs) if announce_addrs is not None else None
        self._dial_timeout = dial_timeout
        self._max_pubsub_message = max_pubsub_message
        self._interface_ips = _interface_ipv4s()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._topics: dict[str, _Topic] = {}
        self._topic_lock = trio.Lock()
        self._handlers: dict[str, StreamHandler] = {}
        self._known_peers: set[str] = set()
        self._event_iterators: weakref.WeakSet[_PeerEventIterator] = weakref.WeakSet()
        host.get_network().register_notifee(_PeerNotifee(self))

    # ---- identity and addresses

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def listen_addrs(self) -> list[str]:
        """Dialable addresses ending in ``/p2p/<peer_id>``, with the real bound ports.

        ``announce_addrs``, when given, replace everything. Otherwise each listener's
        address is used, and a wildcard listener (``0.0.0.0``) is expanded to 127.0.0.1
        plus this machine's non-loopback IPv4 addresses: the wildcard itself is not
        dialable, loopback makes same-machine networks work without any configuration,
        and the interface addresses are what LAN peers can reach. (IPv6 ``::`` becomes
        ``::1``.) NAT traversal is out of scope: nodes behind NAT announce their public
        address explicitly.
        """
        if self._closed:
            return []
        return [f"{a}/p2p/{self._peer_id}" for a in self._advertised()]

    def _advertised(self) -> list[str]:
        if self._announce is not None:
            return [_strip_p2p(a) for a in self._announce]
        out: list[str] = []
        for addr in self._host.get_transport_addrs():
            text = _strip_p2p(str(addr))
            for expanded in self._expand_wildcard(text):
                if expanded not in out:
                    out.append(expanded)
        return out

    def _expand_wildcard(self, text: str) -> list[str]:
        if text.startswith("/ip4/0.0.0.0/"):
            rest = text[len("/ip4/0.0.0.0") :]
            return [f"/ip4/{ip}{rest}" for ip in self._interface_ips]
        if text.startswith("/ip6/::/"):
            return ["/ip6/::1" + text[len("/ip6/::") :]]
        return [text]

    def _addrs_factory(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        """What identify advertises: the same list as ``listen_addrs`` (without /p2p)."""
        try:
            return [multiaddr.Multiaddr(a) for a in self._advertised()]
        except Exception:
            log.debug("addrs factory failed", exc_info=True)
            return candidates

    # ---- connections

    async def connect(self, addr: str) -> str:
        """Dial ``addr`` (``.../p2p/<id>``) within ``dial_timeout``; return the peer ID.

        A no-op for a connected peer. For a peer not connected now, stale addresses and the
        library's 60 s "recently failed" ban are cleared first, so a peer that restarted on
        a new port can be dialed again at once. Raises DialError.
        """
        self._check_open()
        try:
            maddr = multiaddr.Multiaddr(addr)
            info = info_from_p2p_addr(maddr)
        except Exception as exc:
            raise DialError(f"cannot dial {addr!r}: not a multiaddr ending in /p2p/<id> ({exc})") from exc
        if _is_quic(maddr):
            raise DialError(f"cannot dial {addr!r}: QUIC is not supported by this transport")
        peer = str(info.peer_id)
        if peer == self._peer_id:
            raise DialError(f"cannot dial {addr!r}: that is our own peer id")
        network = self._host.get_network()
        if network.get_connections(info.peer_id):
            await trio.lowlevel.checkpoint()
            return peer
        self._forget_dial_state(info.peer_id)
        failure: Exception | None = None
        with trio.move_on_after(self._dial_timeout) as scope:
            try:
                await self._host.connect(info)
            except Exception as exc:
                failure = exc
        if failure is not None:
            raise DialError(f"cannot dial {addr}: {failure}") from failure
        if scope.cancelled_caught:
            raise DialError(f"cannot dial {addr}: no connection within {self._dial_timeout:g} s")
        return peer

    def _forget_dial_state(self, peer: ID) -> None:
        """Drop stale addresses and the negative-cache entry (dial_peer tries one addr per
        transport, the stale one, and bans a failed peer for 60 s)."""
        with contextlib.suppress(Exception):
            self._host.get_peerstore().clear_addrs(peer)
        with contextlib.suppress(Exception):
            self._host.get_network()._negative_peer_cache.evict(str(peer))  # type: ignore[attr-defined]

    def connected_peers(self) -> set[str]:
        if self._closed:
            return set()
        return {str(p) for p in self._host.get_connected_peers()}

    def peer_events(self) -> AsyncIterator[PeerEvent]:
        """Events from now on: one ``connected=True`` when a peer's first connection opens,
        one ``connected=False`` when its last one closes (seen ~0.1 s after the socket
        dies: libp2p waits that long before notifying). Pushed by a swarm notifee, no
        polling. A consumer more than 1024 events behind loses events (logged); the
        iterator ends when the transport closes."""
        iterator = _PeerEventIterator()
        if self._closed:
            iterator._end()
        else:
            self._event_iterators.add(iterator)
        return iterator

    def _refresh_peers(self) -> None:
        if self._closed:
            return
        now = {str(p) for p in self._host.get_connected_peers()}
        events = [PeerEvent(p, True) for p in sorted(now - self._known_peers)]
        events += [PeerEvent(p, False) for p in sorted(self._known_peers - now)]
        self._known_peers = now
        for event in events:
            for iterator in list(self._event_iterators):
                iterator._push(event)

    # ---- streams

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``. The handler runs in the transport's nursery; if it raises, the
        exception is logged and the stream reset; when it returns, the stream is closed."""
        self._check_open()
        self._handlers[protocol] = handler

        async def on_stream(raw: INetStream) -> None:
            # Runs in libp2p's per-connection nursery: must not raise, must not block.
            stream = Libp2pStream(raw, _remote_peer(raw))
            nursery = self._nursery
            if nursery is None or self._closed:
                await stream._reset()
                return
            try:
                nursery.start_soon(self._run_handler, protocol, handler, stream)
            except RuntimeError:  # nursery closing: we are shutting down
                await stream._reset()

        self._host.set_stream_handler(TProtocol(protocol), on_stream)

    async def _run_handler(self, protocol: str, handler: StreamHandler, stream: Libp2pStream) -> None:
        ticket = self.guard.admit(stream.remote_peer)
        if ticket is None:  # over the stream caps (counted and logged by the guard)
            await stream._reset()
            return
        stream.meter = ticket.meter
        ok = False
        try:
            with ticket.scope:
                await handler(stream)
            ok = not ticket.cut_off
        except Exception:
            log.exception("handler for %s from %s failed; resetting the stream", protocol, stream.remote_peer)
        finally:
            ticket.close()
            if ok:
                await stream.aclose()
            else:
                await stream._reset()

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        """Open a ``protocol`` stream to ``peer_id`` (dialing it from known addresses if not
        connected), bounded by ``dial_timeout``. Raises DialError, also when the peer does
        not speak ``protocol``."""
        self._check_open()
        peer = _parse_peer_id(peer_id)
        if self.guard.refusing(peer_id):
            raise DialError(f"cannot open {protocol} stream to {peer_id}: it is cut off (over its stream caps)")
        failure: Exception | None = None
        raw: INetStream | None = None
        with trio.move_on_after(self._dial_timeout) as scope:
            try:
                raw = await self._host.new_stream(peer, [TProtocol(protocol)])
            except Exception as exc:
                failure = exc
        if failure is not None:
            raise DialError(f"cannot open {protocol} stream to {peer_id}: {failure}") from failure
        if scope.cancelled_caught or raw is None:
            raise DialError(f"cannot open {protocol} stream to {peer_id}: timed out after {self._dial_timeout:g} s")
        stream = Libp2pStream(raw, peer_id)
        stream.meter = self.guard.meter(peer_id)
        return stream

    # ---- pubsub

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and publish ``data``; raises LocalProtocolError above the size limit."""
        self._check_open()
        if len(data) > self._max_pubsub_message:
            raise LocalProtocolError(
                f"pubsub message of {len(data)} bytes exceeds the limit of {self._max_pubsub_message}"
            )
        try:
            await self._pubsub.publish(topic, bytes(data))
        except Exception as exc:
            raise TransportError(f"publish on {topic!r} failed: {exc!r}") from exc

    async def subscribe(self, topic: str, validator: Validator | None = None) -> Libp2pSubscription:
        """Subscribe to ``topic``. See :mod:`transports.libp2p._pubsub` for how validators combine."""
        self._check_open()
        subscription = Libp2pSubscription(self, topic, validator)
        async with self._topic_lock:
            self._check_open()
            state = self._topics.get(topic)
            if state is None:
                state = _Topic(topic)
                self._pubsub.set_topic_validator(topic, _topic_validator(state, self._max_pubsub_message), False)
                try:
                    state.libp2p_subscription = await self._pubsub.subscribe(topic)
                except Exception as exc:
                    self._pubsub.remove_topic_validator(topic)
                    raise TransportError(f"subscribe to {topic!r} failed: {exc!r}") from exc
                self._topics[topic] = state
                assert self._nursery is not None
                self._nursery.start_soon(_drain, state)
            state.subscriptions.append(subscription)
        return subscription

    async def _remove_subscription(self, subscription: Libp2pSubscription) -> None:
        async with self._topic_lock:
            state = self._topics.get(subscription.topic)
            if state is None or subscription not in state.subscriptions:
                return
            state.subscriptions.remove(subscription)
            if state.subscriptions or self._closed:
                return
            del self._topics[state.name]
            state.drain_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(_STREAM_CLOSE_TIMEOUT):
                try:
                    await self._pubsub.unsubscribe(state.name)
                except Exception:
                    log.debug("unsubscribe from %s failed", state.name, exc_info=True)
            self._pubsub.remove_topic_validator(state.name)

    # ---- lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosed("the libp2p transport is closed")

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._refresh_peers()

    def _begin_close(self) -> None:
        """End every subscription and event iterator; later calls raise StreamClosed."""
        self._closed = True
        for state in self._topics.values():
            state.drain_scope.cancel()
            for subscription in state.subscriptions:
                subscription._end()
        for iterator in list(self._event_iterators):
            iterator._end()
