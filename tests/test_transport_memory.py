"""The memory transport: the shared conformance suite under virtual time, plus what only the
memory transport has (latency, jitter, partitions, seeded loss, scale)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from p2pserve.errors import ConnectionBroken, DialError, StreamClosed, TransportError
from p2pserve.testing.stream_helpers import collect, echo_handler, read_all, wait_until
from p2pserve.testing.transport_suite import KillFn, OpenTransport, TransportConformance
from p2pserve.transport import PeerEvent, PubsubMessage, Stream, Transport
from tests.conftest import signer_for
from transports.memory import LinkSpec, MemoryNetwork, MemoryTransport
from transports.memory._timers import SharedTimers

PROTO = "/p2pserve/test/mem/1"


class TestMemoryConformance(TransportConformance):
    trio_stream_gaps = frozenset({"max_bytes_type"})
    @pytest.fixture
    def transport_clock(self, autojump_clock: trio.testing.MockClock) -> trio.abc.Clock:
        return autojump_clock

    @pytest.fixture
    def open_transport(self) -> OpenTransport:
        network = MemoryNetwork(seed=1, default_latency=0.002)
        return lambda i: network.open_transport(signer_for(i))

    @pytest.fixture
    def kill_transport(self) -> KillFn:
        async def kill(t: Transport) -> None:
            assert isinstance(t, MemoryTransport)
            t.kill()
            await trio.lowlevel.checkpoint()

        return kill

    async def test_suite_runs_in_virtual_time(self, transport_clock: trio.abc.Clock) -> None:
        assert isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


class TestMemoryConformanceGracefulClose(TransportConformance):
    """The same suite where a vanishing peer leaves its context instead of calling kill()."""

    trio_stream_gaps = frozenset({"max_bytes_type"})

    @pytest.fixture
    def transport_clock(self, autojump_clock: trio.testing.MockClock) -> trio.abc.Clock:
        return autojump_clock

    @pytest.fixture
    def open_transport(self) -> OpenTransport:
        network = MemoryNetwork(seed=2, default_latency=0.01, default_jitter=0.005)
        return lambda i: network.open_transport(signer_for(i))


# -- memory-only behaviour ---------------------------------------------------------------------


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def start(nursery: trio.Nursery, network: MemoryNetwork, n: int, first: int = 0) -> list[MemoryTransport]:
    async def run(i: int, *, task_status: trio.TaskStatus[MemoryTransport] = trio.TASK_STATUS_IGNORED) -> None:
        async with network.open_transport(signer_for(i)) as t:
            task_status.started(t)
            await trio.sleep_forever()

    return [await nursery.start(run, i) for i in range(first, first + n)]


async def test_latency_is_applied(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    network = MemoryNetwork(default_latency=0.05)
    a, b = await start(nursery, network, 2)
    arrivals: list[float] = []

    async def handler(stream: Stream) -> None:
        data = await stream.receive_some()
        arrivals.append(trio.current_time())
        await stream.send_all(data)

    b.set_handler(PROTO, handler)
    t0 = trio.current_time()
    await a.connect(b.listen_addrs()[0])
    assert trio.current_time() - t0 == pytest.approx(0.1)  # one RTT to dial
    t0 = trio.current_time()
    s = await a.open_stream(b.peer_id, PROTO)
    assert trio.current_time() - t0 == pytest.approx(0.1)  # one RTT to negotiate
    t0 = trio.current_time()
    await s.send_all(b"ping")
    assert trio.current_time() == t0  # writes do not wait for the link
    assert await s.receive_some() == b"ping"
    assert arrivals[0] - t0 == pytest.approx(0.05)
    assert trio.current_time() - t0 == pytest.approx(0.1)


async def test_asymmetric_link_and_link_model(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    network = MemoryNetwork(link_model=lambda src, dst: LinkSpec(latency=0.3))
    a, b = await start(nursery, network, 2)
    network.set_link(a.peer_id, b.peer_id, latency=0.1, symmetric=False)
    assert network.link(a.peer_id, b.peer_id).latency == 0.1
    assert network.link(b.peer_id, a.peer_id).latency == 0.3
    t0 = trio.current_time()
    await a.connect(b.listen_addrs()[0])
    assert trio.current_time() - t0 == pytest.approx(0.4)
    with pytest.raises(ValueError):
        LinkSpec(loss=1.5)


async def test_jitter_keeps_stream_order(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    network = MemoryNetwork(seed=3, default_latency=0.01, default_jitter=0.05)
    a, b = await start(nursery, network, 2)
    got: list[bytes] = []

    async def handler(stream: Stream) -> None:
        got.append(await read_all(stream))

    b.set_handler(PROTO, handler)
    await a.connect(b.listen_addrs()[0])
    s = await a.open_stream(b.peer_id, PROTO)
    expected = b""
    for i in range(200):
        chunk = b"%d," % i
        expected += chunk
        await s.send_all(chunk)
        await trio.sleep(0.001)
    await s.aclose()
    await wait_until(lambda: bool(got))
    assert got == [expected]


async def test_send_window_applies_back_pressure(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = MemoryNetwork(stream_window=1000)
    a, b = await start(nursery, network, 2)
    release = trio.Event()
    received: list[bytes] = []

    async def slow_reader(stream: Stream) -> None:
        await release.wait()
        received.append(await read_all(stream))

    b.set_handler(PROTO, slow_reader)
    await a.connect(b.listen_addrs()[0])
    s = await a.open_stream(b.peer_id, PROTO)
    await s.send_all(b"x" * 1500)  # fits: the window was empty
    with trio.move_on_after(1) as scope:
        await s.send_all(b"y" * 10)
    assert scope.cancelled_caught  # blocked: 1500 unread bytes > window
    release.set()
    await s.send_all(b"z")
    await s.aclose()
    await wait_until(lambda: bool(received))
    assert received == [b"x" * 1500 + b"z"]


async def test_partition_blocks_pubsub_and_streams_until_heal(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = MemoryNetwork(default_latency=0.01, dial_timeout=5.0)
    a, b, c = await start(nursery, network, 3)
    topic = "/t"
    await a.connect(b.listen_addrs()[0])
    boxes: list[list[PubsubMessage]] = [[], []]
    for t, box in zip((b, c), boxes):
        nursery.start_soon(collect, await t.subscribe(topic), box)
    got: list[bytes] = []

    async def handler(stream: Stream) -> None:
        got.append(await stream.receive_some())

    b.set_handler(PROTO, handler)
    s = await a.open_stream(b.peer_id, PROTO)

    network.partition([a.peer_id], [b.peer_id, c.peer_id])
    assert network.blocked(b.peer_id, a.peer_id)
    assert b.peer_id in a.connected_peers()  # connections survive, like TCP before keepalive
    await a.publish(topic, b"during")
    await s.send_all(b"held")
    t0 = trio.current_time()
    with pytest.raises(DialError):
        await a.connect(c.listen_addrs()[0])
    assert trio.current_time() - t0 == pytest.approx(5.0)  # waited dial_timeout for a heal
    assert boxes[0] == [] and got == []

    network.heal()
    await wait_until(lambda: got == [b"held"])
    await a.publish(topic, b"after")
    await wait_until(lambda: [m.data for m in boxes[0]] == [b"after"])  # "during" was lost
    await a.connect(c.listen_addrs()[0])
    await a.publish(topic, b"to-c")
    await wait_until(lambda: [m.data for m in boxes[1]] == [b"to-c"])


async def test_partition_with_disconnect_breaks_streams(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    network = MemoryNetwork(default_latency=0.01)
    a, b = await start(nursery, network, 2)
    events = a.peer_events()
    b.set_handler(PROTO, echo_handler)
    await a.connect(b.listen_addrs()[0])
    s = await a.open_stream(b.peer_id, PROTO)
    network.partition([a.peer_id], [b.peer_id], disconnect=True)
    assert a.connected_peers() == set() and b.connected_peers() == set()
    with pytest.raises(ConnectionBroken):
        await s.receive_some()
    with pytest.raises(ConnectionBroken):
        await s.send_all(b"x")
    assert [await events.__anext__(), await events.__anext__()] == [
        PeerEvent(b.peer_id, True),
        PeerEvent(b.peer_id, False),
    ]
    await s.aclose()
    with pytest.raises(StreamClosed):
        await s.receive_some()


async def _losses(seed: int) -> list[bytes]:
    network = MemoryNetwork(seed=seed, default_latency=0.01, default_loss=0.5)
    box: list[PubsubMessage] = []
    async with trio.open_nursery() as nursery:
        a, b = await start(nursery, network, 2)
        await a.connect(b.listen_addrs()[0])
        nursery.start_soon(collect, await b.subscribe("/t"), box)
        for i in range(200):
            await a.publish("/t", b"%d" % i)
            await trio.sleep(0.001 * (i % 3))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return [m.data for m in box]


async def test_loss_is_seeded_and_deterministic(autojump_clock: trio.testing.MockClock) -> None:
    first, again, other = await _losses(7), await _losses(7), await _losses(8)
    assert first == again
    assert first != other
    assert 60 < len(first) < 140  # about half of 200


async def test_relay_needs_subscription_unless_configured(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    for relay, expected in ((False, []), (True, [b"m"])):
        network = MemoryNetwork(relay_unsubscribed=relay)
        a, b, c = await start(nursery, network, 3)
        await a.connect(b.listen_addrs()[0])
        await b.connect(c.listen_addrs()[0])
        box: list[PubsubMessage] = []
        nursery.start_soon(collect, await c.subscribe("/t"), box)
        await a.publish("/t", b"m")
        await trio.sleep(1)
        assert [m.data for m in box] == expected


async def test_addresses_and_identity_rules(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    a, b = await start(nursery, network, 2)
    old_addr = b.listen_addrs()[0]
    assert old_addr == f"/memory/{b.index}/p2p/{b.peer_id}"
    with pytest.raises(TransportError):
        async with network.open_transport(b.peer_id):
            pass
    with pytest.raises(DialError):
        await a.connect(a.listen_addrs()[0])
    with pytest.raises(DialError):
        await a.connect("/ip4/127.0.0.1/tcp/1/p2p/" + b.peer_id)
    b.kill()
    assert network.transport(b.peer_id) is None
    with pytest.raises(DialError):
        await a.connect(old_addr)
    (b2,) = await start(nursery, network, 1, first=1)  # same key restarts where it listened (a configured port)
    assert b2.peer_id == b.peer_id and b2.listen_addrs()[0] == old_addr
    assert await a.connect(old_addr) == b.peer_id
    with pytest.raises(StreamClosed):
        await b.publish("/t", b"dead")


async def test_open_stream_redials_known_peer(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    network = MemoryNetwork(default_latency=0.01)
    a, b = await start(nursery, network, 2)
    b.set_handler(PROTO, echo_handler)
    await a.connect(b.listen_addrs()[0])
    a.disconnect(b.peer_id)
    assert b.peer_id not in a.connected_peers()
    s = await a.open_stream(b.peer_id, PROTO)  # known from before: dialed again
    await s.send_eof()
    assert await read_all(s) == b""
    with pytest.raises(DialError):
        await a.open_stream(b.peer_id, "/no/such/protocol")


async def test_handler_return_closes_stream(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    a, b = await start(nursery, network, 2)

    async def short(stream: Stream) -> None:
        await stream.send_all(b"only this")

    b.set_handler(PROTO, short)
    await a.connect(b.listen_addrs()[0])
    s = await a.open_stream(b.peer_id, PROTO)
    assert await read_all(s) == b"only this"
    with pytest.raises(ConnectionBroken):
        await s.send_all(b"too late")


async def test_hundred_transports_connect_and_gossip(autojump_clock: trio.testing.MockClock) -> None:
    n = 100
    network = MemoryNetwork(seed=11, default_latency=0.02, default_jitter=0.01)
    rng = network.rng
    wall0 = time.perf_counter()
    boxes: list[list[PubsubMessage]] = [[] for _ in range(n)]
    async with trio.open_nursery() as nursery:
        ts = await start(nursery, network, n)
        for i, t in enumerate(ts):  # a ring plus two random chords per node
            await t.connect(ts[(i + 1) % n].listen_addrs()[0])
            for j in rng.sample(range(n), 2):
                if j != i:
                    await t.connect(ts[j].listen_addrs()[0])
        for t, box in zip(ts, boxes):
            nursery.start_soon(collect, await t.subscribe("/status"), box)
        t0 = trio.current_time()
        for t in ts:
            await t.publish("/status", t.peer_id.encode())
        with trio.fail_after(10):
            await wait_until(lambda: all(len(box) == n for box in boxes))
        spread = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    wall = time.perf_counter() - wall0
    for box in boxes:
        assert sorted(m.data for m in box) == sorted(t.peer_id.encode() for t in ts)
        assert all(m.from_peer.encode() == m.data for m in box)
    assert spread < 1.0  # a handful of 20-30 ms hops in virtual time
    assert wall < 20  # generous: a shared 2-core machine; typically well under 2 s


async def test_links_without_loss_or_jitter_draw_nothing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-hop loss and jitter draws are hashes, so a link that needs neither skips them
    (a cost per delivery at scale) and arrival times stay exactly the latency."""
    import transports.memory._transport as impl

    calls: list[tuple[object, ...]] = []
    real = impl._unit_draws
    monkeypatch.setattr(impl, "_unit_draws", lambda *parts: calls.append(parts) or real(*parts))
    network = MemoryNetwork(seed=4, default_latency=0.05, pubsub_tick=0)
    a, b, c = await start(nursery, network, 3)
    network.set_link(a.peer_id, c.peer_id, jitter=0.01)
    for t in (b, c):
        await a.connect(t.listen_addrs()[0])
    boxes: list[list[PubsubMessage]] = [[], []]
    arrivals: list[list[float]] = [[], []]

    def record(i: int) -> Callable[[PubsubMessage], bool]:
        return lambda msg: arrivals[i].append(trio.current_time()) is None

    for i, t in enumerate((b, c)):
        nursery.start_soon(collect, await t.subscribe("/t", record(i)), boxes[i])
    t0 = trio.current_time()
    await a.publish("/t", b"m")
    await trio.sleep(1)
    assert arrivals[0] == [t0 + 0.05] and len(calls) == 1  # only the jittery a->c hop drew
    assert t0 + 0.05 <= arrivals[1][0] < t0 + 0.06


async def test_shared_timers_give_one_timeout_per_instant(autojump_clock: trio.testing.MockClock) -> None:
    """Tasks waiting for the same instant share one trio timeout; a leader that leaves early
    (cancelled, or woken) hands over, and every waiter still wakes exactly on time."""
    timers = SharedTimers()
    deadline = trio.current_time() + 1.0
    lots = [trio.lowlevel.ParkingLot() for _ in range(5)]
    woke: dict[int, float] = {}
    waiting: list[int] = []

    async def waiter(i: int) -> None:
        while trio.current_time() < deadline:  # callers re-check after every return
            await timers.wait(deadline, lots[i])
        woke[i] = trio.current_time()

    with trio.fail_after(10):  # a stranded follower would wait forever
        await _leaders_hand_over(timers, deadline, lots, waiter, waiting)
    assert woke == {i: deadline for i in range(5)}
    assert waiting == [1, 1, 1] and len(timers) == 0


async def _leaders_hand_over(
    timers: SharedTimers, deadline: float, lots: list[trio.lowlevel.ParkingLot], waiter: Callable[[int], Awaitable[None]], waiting: list[int]
) -> None:
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def first_leader() -> None:
            with first:
                await timers.wait(deadline, trio.lowlevel.ParkingLot())

        nursery.start_soon(first_leader)
        await trio.sleep(0.1)
        for i in range(5):
            nursery.start_soon(waiter, i)
        await trio.sleep(0.1)
        waiting.append(len(timers))
        first.cancel()  # the leader goes: a follower takes over
        await trio.sleep(0.1)
        waiting.append(len(timers))
        for lot in lots:  # whoever leads now is woken early, and hands over again
            lot.unpark_all()
        await trio.sleep(0.1)
        waiting.append(len(timers))
