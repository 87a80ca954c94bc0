"""The product transport: a real py-libp2p 0.8.1 host behind :mod:`p2pserve.transport`.

Wire stack: TCP, Noise, Yamux (set explicitly, nothing else is offered), identify, and
gossipsub v1.1 with strict message signing. The libp2p key is derived from the node's
:class:`~p2pserve.crypto.Signer` seed, so the libp2p peer ID *is* ``signer.peer_id``.
QUIC (``/udp/N/quic-v1``) is rejected with a ConfigError: see ``docs/libp2p-notes.md``.

Entry point::

    async with open_libp2p_transport(signer, ["/ip4/127.0.0.1/tcp/0"]) as t:
        ...

What this module owns, and its invariants:

* **Translation at the edge.** No libp2p, multiaddr or yamux exception leaves this module
  or the ``transports.libp2p._*`` modules behind it: every call that reaches into libp2p
  catches ``Exception`` and raises a :class:`~p2pserve.errors.TransportError` subclass
  ``from`` it. Only p2pserve errors and trio cancellation escape.
* **Host settings for 0.8.1** (measured and explained in ``docs/libp2p-notes.md``): gossipsub
  gets a real heartbeat, no adaptive gossip, v1.1 only, no spam protection and short
  backoffs; the auto-connector is off (node code decides whom to dial). The process-wide
  workarounds are in ``transports.libp2p._setup``, applied on first use.
* **Shutdown.** Leaving the context ends every subscription and event iterator, cancels
  handlers and drain tasks, then ``host.close()`` (bounded by ``close_timeout``) closes
  inbound *and* outbound connections before the host and then pubsub stop, in that order.
  Each transport must be entered and exited by the same task (libp2p opens nurseries in
  ``host.run``).

Where the rest lives: ``_setup`` (process-wide workarounds, the logger),
``_addrs`` (listen/dial addresses), ``_stream`` (:class:`Libp2pStream`),
``_pubsub`` (subscriptions, topic validators), ``_events`` (peer events),
``_transport`` (:class:`Libp2pTransport`). This module runs the host.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_V10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_V11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from libp2p import new_host
from p2pserve.clock import SYSTEM_CLOCK
from p2pserve.crypto import Signer
from p2pserve.errors import ConfigError, TransportError
from p2pserve.membership.ratelimit import OffenceLog
from p2pserve.net.caps import DEFAULT_STREAM_CAPS, StreamCaps
from p2pserve.wire.limits import DEFAULT_LIMITS
from transports.libp2p._addrs import _parse_listen_addr, _probe_port, _strip_p2p
from transports.libp2p._pubsub import Libp2pSubscription
from transports.libp2p._setup import _configure_process, log
from transports.libp2p._stream import Libp2pStream
from transports.libp2p._transport import Libp2pTransport

__all__ = [
    "Libp2pStream",
    "Libp2pSubscription",
    "Libp2pTransport",
    "open_libp2p_transport",
]


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
    stream_caps: StreamCaps = DEFAULT_STREAM_CAPS,
) -> AsyncIterator[Libp2pTransport]:
    """Run a libp2p host listening on ``listen_addrs`` (e.g. ``/ip4/127.0.0.1/tcp/0``).

    ``announce_addrs`` replace the advertised addresses (for NAT or port forwarding).
    ``gossip_degree`` is gossipsub's (D, D_low, D_high). ``stream_caps`` bound inbound
    streams and buffered frame bytes per peer and in all (:mod:`p2pserve.net.caps`).
    Raises ConfigError for a bad or QUIC listen address and TransportError when listening
    fails. Leaving the context closes everything within about ``close_timeout`` seconds.
    Enter and exit from the same task.
    """
    _configure_process()
    listen = _check_addrs(signer, listen_addrs, announce_addrs)
    transport: Libp2pTransport | None = None

    def addrs_factory(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        return transport._addrs_factory(candidates) if transport is not None else candidates

    host, pubsub, gossipsub = _build_host(signer, listen, addrs_factory, gossip_heartbeat, gossip_degree, dial_timeout)
    transport = Libp2pTransport(
        host,
        pubsub,
        announce_addrs=announce_addrs,
        dial_timeout=dial_timeout,
        max_pubsub_message=max_pubsub_message,
        stream_caps=stream_caps,
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
        unwrapped = _sole_exception(group, primary)
        if unwrapped is None:
            raise
    if unwrapped is not None:
        raise unwrapped


def _check_addrs(
    signer: Signer, listen_addrs: Sequence[str], announce_addrs: Sequence[str] | None
) -> list[multiaddr.Multiaddr]:
    """The listen multiaddrs, after checking every address and the key (ConfigError)."""
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
    return listen


def _build_host(
    signer: Signer,
    listen: list[multiaddr.Multiaddr],
    addrs_factory: Callable[[list[multiaddr.Multiaddr]], list[multiaddr.Multiaddr]],
    gossip_heartbeat: float,
    gossip_degree: tuple[int, int, int],
    dial_timeout: float,
) -> tuple[IHost, Pubsub, GossipSub]:
    """The host (TCP, Noise, Yamux) and gossipsub v1.1 with the settings 0.8.1 needs."""
    key_pair = create_new_key_pair(signer.seed)
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
            score_params=_score_params(),
        )
        pubsub = Pubsub(host, gossipsub)  # strict_signing=True
        # 0.8.1 starts the seqno at the wall-clock second, +1 per message: a node that
        # published faster than once a second restarts below its old seqnos, and peers drop
        # its statuses and blocks as already seen for their seen-cache TTL (120 s)
        pubsub.counter = SYSTEM_CLOCK.wall_ms() * 1000
        _cap_pubsub_streams(host, pubsub, MAX_PUBSUB_STREAMS_PER_PEER)
        _disable_auto_connector(host)
    except Exception as exc:
        raise ConfigError(f"cannot build the libp2p host: {exc!r}") from exc
    return host, pubsub, gossipsub


MAX_PUBSUB_STREAMS_PER_PEER = 2
"""Inbound gossipsub streams one peer may hold open at once. An honest peer opens one (two
for a moment when it reconnects before its old connection is noticed dead); py-libp2p's
pubsub reads these itself, outside the transport's stream caps, and each may hold up to
yamux's 16 MiB window of unread messages, so more are reset."""


def _cap_pubsub_streams(host: IHost, pubsub: Pubsub, limit: int) -> None:
    """Put a per-peer cap on the inbound streams of pubsub's own protocols (see
    :data:`MAX_PUBSUB_STREAMS_PER_PEER`); a peer over it is logged as an offence, at most
    once a minute (:class:`~p2pserve.membership.ratelimit.OffenceLog`)."""
    open_by_peer: dict[ID, int] = {}
    offences = OffenceLog()

    async def handler(stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        held = open_by_peer.get(peer, 0)
        if held >= limit:
            count = offences.record(str(peer), "pubsub-streams", trio.current_time())
            if count is not None:
                log.warning("offence: peer %s opened more than %d gossipsub streams; the extra ones are reset "
                            "(%d time(s) since last logged)", peer, limit, count)
            await stream.reset()
            return
        open_by_peer[peer] = held + 1
        try:
            await pubsub.stream_handler(stream)
        finally:
            left = open_by_peer[peer] - 1
            if left:
                open_by_peer[peer] = left
            else:
                del open_by_peer[peer]

    for protocol in pubsub.router.get_protocols():
        host.set_stream_handler(protocol, handler)


INVALID_MESSAGE_GATE = 100.0
"""Recent (decaying) invalid messages after which a peer's messages are dropped unread."""


def _score_params() -> ScoreParams:
    """Gossipsub v1.1 peer scoring, only as far as 0.8.1 makes it useful: P4 (invalid
    messages, i.e. rejected by a topic validator, our rate limits included) with weight 1,
    decaying 10% per heartbeat, and a publish threshold of ``-INVALID_MESSAGE_GATE``. A peer
    that sent more than that many recently is gated in ``Pubsub.push_msg`` before the
    signature check and the validators, so a flood costs little more than its parsing (about
    ten messages a second get through to validation while its score recovers). Every other
    weight stays 0 and the gossip/graylist/PX thresholds stay -inf: 0.8.1's scorer has no
    "ignore" outcome, and P1-P3 as implemented (no mesh-delivery deficit, time in mesh
    counted per GRAFT) would only reorder honest peers."""
    return ScoreParams(
        p4_invalid_messages=TopicScoreParams(weight=1.0, cap=10 * INVALID_MESSAGE_GATE, decay=0.9),
        publish_threshold=-INVALID_MESSAGE_GATE,
    )


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


def _sole_exception(group: BaseExceptionGroup, primary: list[BaseException]) -> BaseException | None:
    """The nursery wraps the body's exception in a group: the one exception to hand the
    caller back (exactly what the body raised), or None when more went wrong."""
    leaves = _leaf_exceptions(group)
    if len(leaves) == 1 and (not primary or leaves[0] is primary[0]):
        return leaves[0]
    return None


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
