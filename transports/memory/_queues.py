"""The consumer side of a memory transport: subscriptions and peer-event iterators.

Each is a bounded queue consumed with ``async for``, fed synchronously by the transport
(``_push``) and ended by it (``_end``, also on ``aclose``). A full
:class:`MemorySubscription` drops the newest message (``subscription_buffer``, as
gossipsub does for slow consumers) and discards what is buffered when it ends; a full
:class:`_PeerEvents` drops the oldest of 4096 unread events and still yields what is
buffered before it ends.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Generic, Self, TypeVar

import trio

from p2pserve.transport import PeerEvent, PubsubMessage, Validator

if TYPE_CHECKING:
    from transports.memory._transport import MemoryTransport

__all__ = ["MemorySubscription"]

log = logging.getLogger("transports.memory")  # the public module's name: what applications configure


T = TypeVar("T")


class _Queue(Generic[T]):
    """What both queues share: items consumed with ``async for``, woken by ``_push``; once
    ended, the iteration stops when the items left are consumed."""

    __slots__ = ("_closed", "_items", "_lot")

    def __init__(self, maxlen: int | None = None) -> None:
        self._items: deque[T] = deque(maxlen=maxlen)
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        await trio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()
        return self._items.popleft()

    def _end(self) -> None:
        self._closed = True
        self._lot.unpark_all()


class MemorySubscription(_Queue[PubsubMessage]):
    """A bounded queue of one topic's messages for one subscriber."""

    __slots__ = ("_transport", "topic", "validator")

    def __init__(self, transport: MemoryTransport, topic: str, validator: Validator | None) -> None:
        super().__init__()
        self._transport = transport
        self.topic = topic
        self.validator = validator

    def _push(self, msg: PubsubMessage) -> None:
        if len(self._items) >= self._transport.network.subscription_buffer:
            log.debug("subscription %s on %s full; dropping a message", self.topic, self._transport.peer_id)
            return
        self._items.append(msg)
        self._lot.unpark_all()

    def _end(self) -> None:
        self._items.clear()  # a closed subscription discards what is buffered
        super()._end()

    async def aclose(self) -> None:
        """Stop delivery; pending and later messages are discarded. Idempotent."""
        self._transport._unsubscribe(self)
        self._end()
        await trio.lowlevel.checkpoint()


class _PeerEvents(_Queue[PeerEvent]):
    """A live iterator of peer events; ends when the transport closes."""

    __slots__ = ("__weakref__",)

    def __init__(self) -> None:
        super().__init__(maxlen=4096)

    def _push(self, ev: PeerEvent) -> None:
        self._items.append(ev)
        self._lot.unpark_all()
