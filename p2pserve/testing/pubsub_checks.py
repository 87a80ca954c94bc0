"""The pubsub half of the transport conformance suite: :class:`PubsubChecks`, test methods
:class:`~p2pserve.testing.transport_suite.TransportConformance` inherits (fan-out, multi-hop
relay, validators that stop delivery and relay, unsubscribing, vanished peers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio

from p2pserve.testing.stream_helpers import collect, connect, wait_until
from p2pserve.transport import PubsubMessage, Transport

__all__ = ["PubsubChecks"]


class PubsubChecks:
    """Pubsub behaviour every transport must have. Expects the suite's ``timeout``,
    ``settle`` and ``retry_interval`` attributes and its fixtures."""

    timeout: float
    settle: float
    retry_interval: float


    async def _publish_until(
        self, t: Transport, topic: str, data: bytes, seen: Callable[[], bool]
    ) -> None:
        """Publish ``data`` every ``retry_interval`` until ``seen()`` is true."""
        with trio.fail_after(self.timeout):
            while True:
                await t.publish(topic, data)
                with trio.move_on_after(self.retry_interval):
                    await wait_until(seen)
                if seen():
                    return


    async def _subscribe_all(
        self, nursery: trio.Nursery, ts: Sequence[Transport], topic: str, validators: dict[int, Any] | None = None
    ) -> list[list[PubsubMessage]]:
        boxes: list[list[PubsubMessage]] = []
        for i, t in enumerate(ts):
            box: list[PubsubMessage] = []
            sub = await t.subscribe(topic, (validators or {}).get(i))
            nursery.start_soon(collect, sub, box)
            boxes.append(box)
        return boxes

    async def test_publish_reaches_all_subscribers(self, transport_clock: Any, make_transports: Any) -> None:
        a, b, c = await make_transports(3)
        topic = "/p2pserve/test/all/1"
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.timeout):
                await connect(a, b)
                await connect(a, c)
                ra, rb, rc = await self._subscribe_all(nursery, (a, b, c), topic)
                await self._publish_until(
                    a, topic, b"hello", lambda: all(any(m.data == b"hello" for m in r) for r in (rb, rc))
                )
                await wait_until(lambda: any(m.data == b"hello" for m in ra))  # local subscribers too
            nursery.cancel_scope.cancel()
        for box in (ra, rb, rc):
            msg = next(m for m in box if m.data == b"hello")
            assert msg.topic == topic
            assert msg.from_peer == a.peer_id

    async def test_publish_multi_hop(self, transport_clock: Any, make_transports: Any) -> None:
        a, b, c = await make_transports(3)
        topic = "/p2pserve/test/line/1"
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.timeout):
                await connect(a, b)
                await connect(b, c)
                assert c.peer_id not in a.connected_peers()
                _, _, rc = await self._subscribe_all(nursery, (a, b, c), topic)
                await self._publish_until(a, topic, b"far", lambda: any(m.data == b"far" for m in rc))
            nursery.cancel_scope.cancel()
        assert next(m for m in rc if m.data == b"far").from_peer == a.peer_id
        assert c.peer_id not in a.connected_peers()

    async def test_validator_rejection_stops_delivery_and_relay(self, transport_clock: Any, make_transports: Any) -> None:
        a, b, c = await make_transports(3)
        topic = "/p2pserve/test/validate/1"
        seen_by_validator: list[bytes] = []

        def only_good(msg: PubsubMessage) -> bool:
            seen_by_validator.append(msg.data)
            return not msg.data.startswith(b"bad")

        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.timeout + self.settle * 2):
                await connect(a, b)
                await connect(b, c)
                _, rb, rc = await self._subscribe_all(nursery, (a, b, c), topic, {1: only_good})
                # warm the mesh with good messages, then send bad ones, then a good marker
                await self._publish_until(a, topic, b"good-1", lambda: any(m.data == b"good-1" for m in rc))
                for i in range(3):
                    await a.publish(topic, b"bad-%d" % i)
                await self._publish_until(a, topic, b"good-2", lambda: any(m.data == b"good-2" for m in rc))
                await trio.sleep(self.settle)
            nursery.cancel_scope.cancel()
        assert any(d.startswith(b"bad") for d in seen_by_validator)
        assert not any(m.data.startswith(b"bad") for m in rb)
        assert not any(m.data.startswith(b"bad") for m in rc)

    async def test_subscription_aclose_stops_delivery(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        topic = "/p2pserve/test/close/1"
        box: list[PubsubMessage] = []
        marker: list[PubsubMessage] = []
        with trio.fail_after(self.timeout + self.settle * 2):
            await connect(a, b)
            async with trio.open_nursery() as nursery:
                sub = await b.subscribe(topic)
                keep = await b.subscribe(topic)
                nursery.start_soon(collect, sub, box)
                nursery.start_soon(collect, keep, marker)
                await self._publish_until(a, topic, b"one", lambda: any(m.data == b"one" for m in box))
                await sub.aclose()
                await sub.aclose()
                n = len(box)
                await self._publish_until(a, topic, b"two", lambda: any(m.data == b"two" for m in marker))
                await trio.sleep(self.settle)
                assert len(box) == n
                nursery.cancel_scope.cancel()

    async def test_pubsub_stops_reaching_vanished_peer(self, transport_clock: Any, make_transports: Any, kill_transport: Any) -> None:
        a, b, c = await make_transports(3)
        topic = "/p2pserve/test/vanish/1"
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.timeout * 2):
                await connect(a, b)
                await connect(a, c)
                _, rb, rc = await self._subscribe_all(nursery, (a, b, c), topic)
                await self._publish_until(a, topic, b"before", lambda: any(m.data == b"before" for m in rc))
                await kill_transport(c)
                await wait_until(lambda: c.peer_id not in a.connected_peers())
                await self._publish_until(a, topic, b"after", lambda: any(m.data == b"after" for m in rb))
            nursery.cancel_scope.cancel()
        assert not any(m.data == b"after" for m in rc)
