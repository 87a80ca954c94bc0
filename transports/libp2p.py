"""The product transport: a real py-libp2p 0.8.1 host behind :mod:`p2pserve.transport`.

Wire stack: TCP, Noise, Yamux (set explicitly, nothing else is offered), identify, and
gossipsub v1.1 with strict message signing. The libp2p key is derived from the node's
:class:`~p2pserve.crypto.Signer` seed, so the libp2p peer ID *is* ``signer.peer_id``.
QUIC (``/udp/N/quic-v1``) is rejected with a ConfigError: see ``docs/libp2p-notes.md``.

Entry point::

    async with open_libp2p_transport(signer, ["/ip4/127.0.0.1/tcp/0"]) as t:
        ...

What this module owns, and its invariants:

* **Translation at the edge.** No libp2p, multiaddr or yamux exception leaves this module:
  every call that reaches into libp2p catches ``Exception`` and raises a
  :class:`~p2pserve.errors.TransportError` subclass ``from`` it. Only p2pserve errors and
  trio cancellation escape.
* **Workarounds for 0.8.1** (measured in ``/work/shared/research/libp2p.md``): the 250 ms
  happy-eyeballs dial delay is set to 0; ``PY_YAMUX_RELEASE_ON_READ=0``; gossipsub gets a
  real heartbeat, no adaptive gossip, v1.1 only, no spam protection and short backoffs;
  a redial clears the peer's stale addresses and its 60 s negative dial cache entry; the
  auto-connector is off (node code decides whom to dial). These are process-wide module
  globals and are applied on first use.
* **Handlers never kill the host.** libp2p runs each inbound stream in its connection's
  nursery and an escaping exception tears the host down; we only hand the stream over to
  the transport's own nursery, where the user handler runs wrapped: an exception is
  logged and the stream reset; a normal return closes the stream.
* **Pubsub.** One libp2p subscription per topic, drained by a dedicated task (libp2p's own
  queue holds 32 messages and drops beyond that) into one bounded channel per local
  :class:`Subscription`. The topic validator libp2p runs before delivery *and* before
  forwarding is the conjunction of the size limit and the validators of all local
  subscriptions on that topic (py-libp2p allows one validator per topic). Our own
  ``publish`` runs it too; a message it rejects is dropped silently.
* **Peer events** come from a swarm notifee: on every connection open/close the set of
  peers with at least one connection is recomputed and the difference is broadcast, so a
  peer is reported connected once (on its first connection) and disconnected once (when
  its last one closes), whatever the number of connections per peer.
* **Shutdown.** Leaving the context ends every subscription and event iterator, cancels
  handlers and drain tasks, then ``host.close()`` (bounded by ``close_timeout``) closes
  inbound *and* outbound connections before the host and then pubsub stop, in that order.
  Each transport must be entered and exited by the same task (libp2p opens nurseries in
  ``host.run``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import ipaddress
import logging
import os
import socket
import sys
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

# Importing libp2p runs its logging setup, which wipes the "libp2p" logger's handlers:
# our logging configuration below must come after this import.
import libp2p  # noqa: F401  (import order matters)
import libp2p.network.swarm as _libp2p_swarm
import multiaddr
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee, ISubscriptionAPI
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from p2pserve.crypto import Signer
from p2pserve.errors import (
    ConfigError,
    ConnectionBroken,
    DialError,
    LocalProtocolError,
    StreamClosed,
    TransportError,
)
from p2pserve.transport import PeerEvent, PubsubMessage, Stream, StreamHandler, Validator
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = [
    "Libp2pStream",
    "Libp2pSubscription",
    "Libp2pTransport",
    "open_libp2p_transport",
]

log = logging.getLogger(__name__)

_READ_CHUNK = 65536
_STREAM_CLOSE_TIMEOUT = 1.0
_SUBSCRIPTION_BUFFER = 1024
_PEER_EVENT_BUFFER = 1024


# --------------------------------------------------------------------------- process setup


class _ForwardHandler(logging.Handler):
    """Re-emits libp2p records on our logger, so they follow the application's config."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__(logging.WARNING)
        self._target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self._target.isEnabledFor(record.levelno):
            self._target.handle(record)


class _ModuleLogging:
    """Stands in for the ``logging`` module inside libp2p modules that log through the
    root logger: ``logging.debug(...)`` on a handler-less root calls ``basicConfig()``,
    which would install a stderr handler for the whole application. Log calls go to the
    module's own (``libp2p.*``) logger instead; everything else is the real module."""

    _CALLS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def __getattr__(self, attr: str) -> Any:
        if attr in self._CALLS:
            return getattr(self._logger, attr)
        return getattr(logging, attr)


_ROOT_LOGGING_MODULES = ("libp2p.network.connection.swarm_connection", "libp2p.tools.utils")

_configured = False


def _configure_process() -> None:
    """Apply the process-wide 0.8.1 workarounds once (idempotent)."""
    global _configured
    if _configured:
        return
    _configured = True
    # connect() otherwise always waits 250 ms before the first dial, even with one address
    _libp2p_swarm._HAPPY_EYEBALLS_DELAY = 0.0
    # yamux sends ~3 WINDOW_UPDATEs per DATA frame by default; read at call time
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    # libp2p's import leaves its logger handler-less with propagate=False, so its
    # warnings (many are harmless shutdown races) hit stderr through logging.lastResort.
    # Route WARNING and above to our own logger instead; a NullHandler there keeps
    # lastResort quiet when the application configured no logging at all.
    library_log = logging.getLogger(f"{__name__}.library")
    library_log.addHandler(logging.NullHandler())
    logging.getLogger("libp2p").addHandler(_ForwardHandler(library_log))
    for name in _ROOT_LOGGING_MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        if getattr(module, "logging", None) is logging:
            module.logging = _ModuleLogging(name)  # type: ignore[attr-defined]
    # multiaddr logs every parse at DEBUG; keep it out of an application's debug log
    multiaddr_log = logging.getLogger("multiaddr")
    if multiaddr_log.level == logging.NOTSET:
        multiaddr_log.setLevel(logging.INFO)


# --------------------------------------------------------------------------- addresses


def _interface_ipv4s() -> list[str]:
    """127.0.0.1 followed by this machine's non-loopback IPv4 addresses."""
    found: list[str] = []
    try:
        from multiaddr.utils import get_network_addrs

        found = list(get_network_addrs(4) or [])
    except Exception:  # interface enumeration is best effort
        log.debug("could not enumerate network interfaces", exc_info=True)
    out = ["127.0.0.1"]
    for ip in found:
        try:
            parsed = ipaddress.IPv4Address(ip)
        except ValueError:
            continue
        if not parsed.is_loopback and not parsed.is_unspecified and ip not in out:
            out.append(ip)
    return out


def _is_quic(addr: multiaddr.Multiaddr) -> bool:
    return any(p.name in ("quic", "quic-v1") for p in addr.protocols())


def _parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise ConfigError(f"listen address {text!r} is not a multiaddr: {exc}") from exc
    if _is_quic(addr):
        raise ConfigError(
            f"listen address {text!r}: QUIC is not supported by this transport "
            "(py-libp2p 0.8.1; see docs/libp2p-notes.md); use /ip4/<ip>/tcp/<port>"
        )
    names = [p.name for p in addr.protocols()]
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ConfigError(f"listen address {text!r}: expected /ip4/<ip>/tcp/<port>")
    return addr


def _probe_port(addr: multiaddr.Multiaddr) -> None:
    """Fail early when a fixed TCP port is taken.

    libp2p's listener sets SO_REUSEPORT, so a second node binding the same port succeeds
    silently and the kernel splits inbound connections between the two. A plain bind
    with only SO_REUSEADDR (which tolerates TIME_WAIT leftovers of our own previous run)
    fails while anyone listens there.
    """
    family_name, ip, _, port_text = str(addr).split("/")[1:5]
    port = int(port_text)
    if port == 0:
        return
    family = socket.AF_INET6 if family_name == "ip6" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            raise TransportError(f"cannot listen on {addr}: {exc.strerror or exc}") from exc


def _parse_peer_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:
        raise DialError(f"invalid peer id {peer_id!r:.80}: {exc}") from exc


# --------------------------------------------------------------------------- streams


class Libp2pStream:
    """Trio stream semantics over a libp2p ``INetStream`` (see :class:`p2pserve.transport.Stream`).

    ``receive_some`` returns ``b""`` at end of stream (and on every call after it) and
    raises ConnectionBroken on a reset or a dead connection; ``send_all`` raises
    ConnectionBroken when the peer is gone; both raise StreamClosed after ``aclose`` (and
    ``send_all`` after ``send_eof``). ``aclose`` half-closes gracefully (FIN, so data already
    sent is still delivered), falls back to a reset when that fails or hangs, is
    idempotent and never raises. Concurrent calls to the same direction are not supported.
    """

    __slots__ = ("_closed", "_eof_received", "_eof_sent", "_raw", "_remote_peer")

    def __init__(self, raw: INetStream, remote_peer: str) -> None:
        self._raw = raw
        self._remote_peer = remote_peer
        self._closed = False
        self._eof_sent = False
        self._eof_received = False

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
        if not data:
            self._eof_received = True
        return bytes(data)

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
        with trio.CancelScope(shield=True):
            await self._reset_raw()

    async def _reset_raw(self) -> None:
        with trio.move_on_after(_STREAM_CLOSE_TIMEOUT):
            try:
                await self._raw.reset()
            except Exception:
                log.debug("stream reset failed", exc_info=True)


# --------------------------------------------------------------------------- pubsub


class Libp2pSubscription:
    """One local subscriber to a topic. ``async for`` yields messages until closed.

    Iteration ends (``StopAsyncIteration``) once ``aclose`` was called or the transport
    closed; messages still buffered then are discarded. If the consumer falls more than
    ``_SUBSCRIPTION_BUFFER`` messages behind, newer messages are dropped (and logged):
    pubsub is best effort.
    """

    def __init__(self, owner: Libp2pTransport, topic: str, validator: Validator | None) -> None:
        self._owner = owner
        self.topic = topic
        self.validator = validator
        self._send, self._receive = trio.open_memory_channel[PubsubMessage](_SUBSCRIPTION_BUFFER)
        self._closed = False
        self._dropped = 0

    def __aiter__(self) -> Libp2pSubscription:
        return self

    async def __anext__(self) -> PubsubMessage:
        if self._closed:
            raise StopAsyncIteration
        try:
            msg = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if self._closed:
            raise StopAsyncIteration
        return msg

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._end()
        await self._owner._remove_subscription(self)

    def _deliver(self, msg: PubsubMessage) -> None:
        if self._closed:
            return
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 100 == 0:
                log.warning(
                    "subscription to %s is %d messages behind; dropped %d so far",
                    self.topic,
                    _SUBSCRIPTION_BUFFER,
                    self._dropped,
                )
        except trio.BrokenResourceError:
            pass

    def _end(self) -> None:
        self._closed = True
        self._send.close()


@dataclass(eq=False)
class _Topic:
    """Our state for one libp2p topic subscription."""

    name: str
    subscriptions: list[Libp2pSubscription] = field(default_factory=list)
    libp2p_subscription: ISubscriptionAPI | None = None
    drain_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


# --------------------------------------------------------------------------- peer events


class _PeerEventIterator:
    """A fresh stream of peer events; registered weakly, so an abandoned one just goes away."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[PeerEvent](_PEER_EVENT_BUFFER)

    def __aiter__(self) -> _PeerEventIterator:
        return self

    async def __anext__(self) -> PeerEvent:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._send.close()
        await trio.lowlevel.checkpoint()

    def _push(self, event: PeerEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            log.warning("peer event consumer is %d events behind; dropping", _PEER_EVENT_BUFFER)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _end(self) -> None:
        self._send.close()


class _PeerNotifee(INotifee):
    """Swarm notifee: every connection change triggers a recount of connected peers."""

    def __init__(self, owner: Libp2pTransport) -> None:
        self._owner = weakref.ref(owner)

    def _refresh(self) -> None:
        owner = self._owner()
        if owner is not None:
            owner._refresh_peers()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._refresh()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._refresh()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


# --------------------------------------------------------------------------- transport


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
    ) -> None:
        self._host = host
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
        ok = False
        try:
            await handler(stream)
            ok = True
        except Exception:
            log.exception("handler for %s from %s failed; resetting the stream", protocol, stream.remote_peer)
        finally:
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
        return Libp2pStream(raw, peer_id)

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
        """Subscribe to ``topic``. See the module docstring for how validators combine."""
        self._check_open()
        subscription = Libp2pSubscription(self, topic, validator)
        async with self._topic_lock:
            self._check_open()
            state = self._topics.get(topic)
            if state is None:
                state = _Topic(topic)
                self._pubsub.set_topic_validator(topic, self._make_validator(state), False)
                try:
                    state.libp2p_subscription = await self._pubsub.subscribe(topic)
                except Exception as exc:
                    self._pubsub.remove_topic_validator(topic)
                    raise TransportError(f"subscribe to {topic!r} failed: {exc!r}") from exc
                self._topics[topic] = state
                assert self._nursery is not None
                self._nursery.start_soon(self._drain, state)
            state.subscriptions.append(subscription)
        return subscription

    def _make_validator(self, state: _Topic) -> Any:
        limit = self._max_pubsub_message

        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            try:
                if len(msg.data) > limit:
                    return False
                message = PubsubMessage(state.name, ID(msg.from_id).to_base58(), bytes(msg.data))
                return all(
                    s.validator(message) for s in list(state.subscriptions) if s.validator is not None
                )
            except Exception:
                log.exception("validator for %s raised; rejecting the message", state.name)
                return False

        return validate

    async def _drain(self, state: _Topic) -> None:
        """Move messages from libp2p's 32-slot queue to every local subscription."""
        sub = state.libp2p_subscription
        assert sub is not None
        with state.drain_scope:
            async for msg in sub:
                try:
                    message = PubsubMessage(state.name, ID(msg.from_id).to_base58(), bytes(msg.data))
                except Exception:
                    log.debug("undecodable pubsub message on %s", state.name, exc_info=True)
                    continue
                for subscription in list(state.subscriptions):
                    subscription._deliver(message)

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


def _strip_p2p(text: str) -> str:
    index = text.find("/p2p/")
    return text if index < 0 else text[:index]


def _remote_peer(raw: INetStream) -> str:
    try:
        return str(raw.muxed_conn.peer_id)
    except Exception:
        return "<unknown>"


@contextlib.asynccontextmanager
async def open_libp2p_transport(
    signer: Signer,
    listen_addrs: Sequence[str],
    *,
    announce_addrs: Sequence[str] | None = None,
    gossip_heartbeat: float = 1.0,
    gossip_degree: tuple[int, int, int] = (6, 4, 12),
    dial_timeout: float = 10.0,
    close_timeout: float = 5.0,
    max_pubsub_message: int = DEFAULT_LIMITS.max_pubsub_message,
) -> AsyncIterator[Libp2pTransport]:
    """Run a libp2p host listening on ``listen_addrs`` (e.g. ``/ip4/127.0.0.1/tcp/0``).

    ``announce_addrs`` replace the advertised addresses (for NAT or port forwarding).
    ``gossip_degree`` is gossipsub's (D, D_low, D_high). Raises ConfigError for a bad or
    QUIC listen address and TransportError when listening fails. Leaving the context
    closes everything within about ``close_timeout`` seconds. Enter and exit from the
    same task.
    """
    _configure_process()
    if not listen_addrs:
        raise ConfigError("at least one listen address is required")
    listen = [_parse_listen_addr(a) for a in listen_addrs]
    for addr in listen:
        _probe_port(addr)
    for a in announce_addrs or ():
        try:
            multiaddr.Multiaddr(_strip_p2p(a))
        except Exception as exc:
            raise ConfigError(f"announce address {a!r} is not a multiaddr: {exc}") from exc
    key_pair = create_new_key_pair(signer.seed)
    libp2p_id = ID.from_pubkey(key_pair.public_key)
    if libp2p_id.to_base58() != signer.peer_id:  # both derive from the same Ed25519 key
        raise ConfigError(f"libp2p peer id {libp2p_id} differs from signer peer id {signer.peer_id}")

    transport: Libp2pTransport | None = None

    def addrs_factory(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        return transport._addrs_factory(candidates) if transport is not None else candidates

    try:
        host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=listen,  # only selects the transports (TCP)
            connection_config=ConnectionConfig(dial_timeout=dial_timeout),
            addrs_factory=addrs_factory,
        )
        degree, degree_low, degree_high = gossip_degree
        gossipsub = GossipSub(
            protocols=[MESHSUB_V11, MESHSUB_V10],  # no v1.2: IDONTWANT costs an RPC per message
            degree=degree,
            degree_low=degree_low,
            degree_high=degree_high,
            # the library default heartbeat (120 s) never repairs a mesh
            heartbeat_interval=gossip_heartbeat,  # type: ignore[arg-type]  # typed int; floats work
            prune_back_off=5,  # default 60 s starves small meshes after a prune
            unsubscribe_back_off=5,
            adaptive_gossip_enabled=False,  # would stretch the heartbeat to 30-60 s
            spam_protection_enabled=False,  # would stop forwarding beyond 10 msg/s
        )
        pubsub = Pubsub(host, gossipsub)  # strict_signing=True
        _disable_auto_connector(host)
    except Exception as exc:
        raise ConfigError(f"cannot build the libp2p host: {exc!r}") from exc
    transport = Libp2pTransport(
        host,
        pubsub,
        announce_addrs=announce_addrs,
        dial_timeout=dial_timeout,
        max_pubsub_message=max_pubsub_message,
    )

    stop = trio.Event()
    stopped = trio.Event()
    host_scope = trio.CancelScope(shield=True)
    primary: list[BaseException] = []  # what the body raised
    unwrapped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            run_host = functools.partial(
                _run_host, host, pubsub, gossipsub, transport, listen, close_timeout, host_scope, stop, stopped
            )
            await nursery.start(run_host)
            try:
                yield transport
            except BaseException as exc:
                primary.append(exc)
                raise
            finally:
                stop.set()
                with trio.CancelScope(shield=True), trio.move_on_after(close_timeout + 1):
                    await stopped.wait()
                host_scope.cancel()  # a no-op unless the orderly shutdown overran
    except BaseExceptionGroup as group:
        # The nursery wraps the body's exception in a group; hand the caller back
        # exactly what the body raised when nothing else went wrong.
        leaves = _leaf_exceptions(group)
        if len(leaves) == 1 and (not primary or leaves[0] is primary[0]):
            unwrapped = leaves[0]
        else:
            raise
    if unwrapped is not None:
        raise unwrapped


async def _run_host(
    host: IHost,
    pubsub: Pubsub,
    gossipsub: GossipSub,
    transport: Libp2pTransport,
    listen: list[multiaddr.Multiaddr],
    close_timeout: float,
    host_scope: trio.CancelScope,
    stop: trio.Event,
    stopped: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the host in its own task, shielded from the caller's cancellation.

    A cancelled caller must still get an orderly shutdown: cancelling libp2p's service
    nurseries directly kills the tasks that would close connections, leaving sockets
    open and remotes unaware we left. So the caller only sets ``stop``; this task then
    ends handlers and subscriptions, calls ``host.close()`` (closing inbound *and*
    outbound connections) and leaves ``host.run`` and the pubsub services, in that order
    (pubsub services outside ``host.run``: the other order can raise "Nursery is closed
    to new arrivals" at shutdown). ``host_scope`` is cancelled only if that overruns.
    """
    try:
        with host_scope:
            async with background_trio_service(pubsub), background_trio_service(gossipsub):
                async with host.run(listen_addrs=listen):
                    try:
                        _check_listening(host, listen)
                        await pubsub.wait_until_ready()
                        async with trio.open_nursery() as work:  # handlers, pubsub drains
                            transport._start(work)
                            task_status.started()
                            await stop.wait()
                            transport._begin_close()
                            work.cancel_scope.cancel()
                    finally:
                        with trio.move_on_after(close_timeout):
                            try:
                                await host.close()
                            except Exception:
                                log.debug("host.close failed", exc_info=True)
    except Exception as exc:  # also ExceptionGroups from libp2p's nurseries
        leaves = _leaf_exceptions(exc)
        if len(leaves) == 1 and isinstance(leaves[0], TransportError):
            error = leaves[0]
            raise error from error.__cause__
        raise TransportError(f"the libp2p host failed: {leaves[0]!r}") from exc
    finally:
        transport._begin_close()
        stopped.set()


def _disable_auto_connector(host: IHost) -> None:
    """Node code decides whom to dial. libp2p's auto-connector would otherwise dial every
    peer in the peerstore up to (low+high watermark)/2 connections, again after each
    disconnect, including peers that are gone (its config has no "off" setting)."""

    async def do_nothing() -> None:
        await trio.lowlevel.checkpoint()

    host.get_network().auto_connector.maybe_connect = do_nothing  # type: ignore[attr-defined]


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaf_exceptions(sub)]
    return [exc]


def _check_listening(host: IHost, listen: list[multiaddr.Multiaddr]) -> None:
    """libp2p only logs a failed bind; raise TransportError for each address not bound."""
    bound = [str(a) for a in host.get_transport_addrs()]
    for addr in listen:
        ip_part, _, port = str(addr).rpartition("/tcp/")
        prefix = f"{ip_part}/tcp/"
        ok = any(b.startswith(prefix) and (port == "0" or b == f"{prefix}{port}") for b in bound)
        if not ok:
            raise TransportError(f"cannot listen on {addr} (address unavailable or port in use)")
