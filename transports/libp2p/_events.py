"""Peer events for the libp2p transport: the swarm notifee and the event iterators.

Invariants: events are pushed by a swarm notifee, no polling. On every connection
open/close the transport recomputes the set of peers with at least one connection and
broadcasts the difference, so a peer is reported connected once (on its first connection)
and disconnected once (when its last one closes), whatever the number of connections per
peer. The notifee holds its transport weakly; iterators are registered weakly, so an
abandoned one just goes away. A consumer more than ``_PEER_EVENT_BUFFER`` events behind
loses the newest ones (logged).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee

from p2pserve.transport import PeerEvent
from transports.libp2p._setup import log

if TYPE_CHECKING:
    from transports.libp2p._transport import Libp2pTransport

_PEER_EVENT_BUFFER = 1024


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
