"""The transport contract: what node code needs from a network, and nothing more.

Two implementations ship: ``transports.libp2p`` (the product: TCP, Noise, Yamux,
gossipsub) and ``transports.memory`` (in-process, simulated latency/loss/partitions, driven
by trio's clock for tests and the simulator). Both pass ``p2pserve.testing.transport_suite``.
This module is an interface only: it does no I/O and imports no async library.

Semantics every implementation guarantees:

* Peer IDs are libp2p peer ID strings (``12D3KooW...``); addresses are multiaddr strings
  ending in ``/p2p/<peer id>`` when returned by ``listen_addrs``.
* ``Stream`` has trio stream semantics: ``send_all`` sends every byte or raises;
  ``receive_some`` returns at least one byte, or ``b""`` at end of stream. A peer that
  vanishes or resets raises :class:`~p2pserve.errors.ConnectionBroken` (libp2p cannot
  always tell a crash from a clean close, so framed protocols must end their messages
  explicitly and treat an early ``b""`` as broken). Using a stream after ``aclose`` raises
  :class:`~p2pserve.errors.StreamClosed`. ``aclose`` is idempotent and never raises.
  Foreign exceptions never escape: only ``P2PServeError`` subclasses and trio cancellation.
  The suite runs ``trio.testing.check_half_closeable_stream`` on every transport's streams;
  a transport declares the trio properties it still lacks (``trio_stream_gaps``: today
  both accept a non-integer ``max_bytes``, and py-libp2p's streams neither wake a reader
  blocked on a stream being closed nor fail a send after the remote closed), and a test
  fails as soon as a declared gap is fixed.
* Stream handlers run in the transport's own nursery; an exception from a handler is
  logged and the stream reset; it never takes the transport down.
* Resource caps (:mod:`p2pserve.net.caps`): every inbound stream is admitted by the
  transport's :class:`~p2pserve.net.guard.StreamGuard` before its handler runs (a refused
  one is reset), and every stream, either direction, carries a :class:`BufferMeter` as
  ``stream.meter`` that the frame reader tells how many bytes it holds. A peer over its
  caps has its handlers cancelled (their streams reset) and its new streams refused, and
  ``open_stream`` to it raises DialError, until its cut-off ends.
* ``publish`` delivers to every current subscriber of the topic on other reachable peers
  (and to local subscribers), best effort. A subscription's ``validator`` runs before
  delivery *and* before forwarding: a message it rejects is neither delivered nor relayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "BufferMeter",
    "PeerEvent",
    "PubsubMessage",
    "Stream",
    "StreamHandler",
    "Subscription",
    "Transport",
    "Validator",
]


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A peer connected (``connected=True``) or its last connection closed."""

    peer_id: str
    connected: bool


@dataclass(frozen=True, slots=True)
class PubsubMessage:
    """A pubsub message as delivered to a subscriber. ``from_peer`` is the signed origin."""

    topic: str
    from_peer: str
    data: bytes


@runtime_checkable
class Stream(Protocol):
    """A bidirectional byte stream to one peer on one protocol."""

    @property
    def remote_peer(self) -> str: ...

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_eof(self) -> None:
        """Half-close: the remote's ``receive_some`` returns ``b""`` after the data sent so far."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BufferMeter(Protocol):
    """What a stream's reader holds, counted against its peer's and the node's caps."""

    def hold(self, n: int) -> bool:
        """The reader now holds ``n`` bytes received and not yet returned as messages.
        False: over the caps; the reader drops them, calls ``hold(0)`` and fails the stream."""
        ...


StreamHandler = Callable[[Stream], Awaitable[None]]
Validator = Callable[[PubsubMessage], bool]


class Subscription(Protocol):
    """Messages on one topic, in arrival order. Iterate with ``async for``; close to stop."""

    def __aiter__(self) -> AsyncIterator[PubsubMessage]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """A running network endpoint. Obtained from an implementation's async context manager."""

    @property
    def peer_id(self) -> str: ...

    def listen_addrs(self) -> list[str]:
        """Dialable addresses, each ending in ``/p2p/<peer_id>``."""
        ...

    async def connect(self, addr: str) -> str:
        """Connect to ``addr`` (which must end in ``/p2p/<id>``); return that peer ID.

        Idempotent for an already connected peer. Raises DialError.
        """
        ...

    def connected_peers(self) -> set[str]: ...

    def peer_events(self) -> AsyncIterator[PeerEvent]:
        """A fresh iterator of connect/disconnect events from now on."""
        ...

    def set_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        """Open a stream to a connected (or dialable, known) peer. Raises DialError."""
        ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    async def subscribe(self, topic: str, validator: Validator | None = None) -> Subscription: ...
