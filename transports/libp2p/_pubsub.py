"""Pubsub for the libp2p transport: local subscriptions, topic validators, drain tasks.

Invariants: one libp2p subscription per topic (a :class:`_Topic`), drained by a dedicated
task (libp2p's own queue, raised from 32 to 1024 messages by ``_setup``, drops beyond
that) into one bounded queue
per local :class:`Libp2pSubscription`. The topic validator libp2p runs before delivery
*and* before forwarding is the conjunction of the size limit and the validators of all
local subscriptions on that topic (py-libp2p allows one validator per topic); a validator
that raises rejects the message. Our own ``publish`` runs it too; a message it rejects is
dropped silently. Validators get a :class:`RelayedMessage`: a
:class:`~p2pserve.transport.PubsubMessage` that also names ``via``, the peer whose
connection delivered it (libp2p's ``msg_forwarder``; ourselves for our own publish), so
node code can rate-limit per connection. Subscribing and unsubscribing (which owns the
topic table) is :class:`~transports.libp2p._transport.Libp2pTransport`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from libp2p.abc import ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from p2pserve.transport import PubsubMessage, Validator
from transports.libp2p._setup import log

if TYPE_CHECKING:
    from transports.libp2p._transport import Libp2pTransport

__all__ = ["Libp2pSubscription", "RelayedMessage"]

_SUBSCRIPTION_BUFFER = 1024


@dataclass(frozen=True, slots=True)
class RelayedMessage(PubsubMessage):
    """A pubsub message as a validator sees it: ``via`` is the peer that relayed it to us
    (the connection it arrived on), which may differ from the signed origin ``from_peer``."""

    via: str = ""


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


def _topic_validator(state: _Topic, limit: int) -> Any:
    """The validator libp2p runs for ``state``'s topic: the size limit and every local
    subscription's validator; an exception counts as a rejection (logged)."""

    def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
        try:
            if len(msg.data) > limit:
                return False
            message = RelayedMessage(state.name, ID(msg.from_id).to_base58(), bytes(msg.data), forwarder.to_base58())
            return all(
                s.validator(message) for s in list(state.subscriptions) if s.validator is not None
            )
        except Exception:
            log.exception("validator for %s raised; rejecting the message", state.name)
            return False

    return validate


async def _drain(state: _Topic) -> None:
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
