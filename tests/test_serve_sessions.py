"""Offer sessions in virtual time: requests reuse idle infer streams; a stale pooled stream is
replaced without a fail-over; a peer dying with several session requests in flight lets each
fail over on its own; idle streams expire; the executor ends a session on a protocol error."""

from __future__ import annotations

import trio
import trio.testing

from p2pserve.errors import ConnectionBroken
from p2pserve.net.framed import FramedStream
from p2pserve.policies import PolicyParams
from p2pserve.serving.service import Completed, Deadlines, Started
from p2pserve.wire.infer import INFER_PROTOCOL, REQUEST_ID_SIZE, Accept, Chunk, Done, InferRequest
from tests.serve_harness import (
    NETWORK,
    Hang,
    ScriptedBackend,
    collect,
    connect_all,
    signer,
    start_node,
    text_of,
    wall_clock,
)
from transports.memory import MemoryNetwork

FAST = Deadlines(accept_s=2.0, first_token_s=5.0, idle_s=3.0)


async def test_sequential_requests_share_one_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {})
        exe = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("a", "b", "c"))})
        await connect_all(gw, [exe])
        for _ in range(5):
            events, err = await collect(gw.serve)
            assert err is None and text_of(events) == "abc"
        assert gw.streams_opened == 1
        assert exe.serve.counters.served_for_peers == 5
        assert len({r.request_id for r in gw.receipts}) == 5  # each request has its own id and receipt
        nursery.cancel_scope.cancel()


async def test_rejected_offer_leaves_the_session_usable(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        # the refused request gives up after max_wait_s: well inside pool_idle_s (30 s), so
        # the pooled stream is still fresh for the third request
        gw = await start_node(nursery, net, 1, {}, params=PolicyParams(accept_frequency=1.0, max_wait_s=5.0))
        exe = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("ok",))}, prices={"m": 1000})
        await connect_all(gw, [exe])
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "ok"
        exe.serve.prices["m"] = 10**9  # now every offer is below its price: Reject("price")
        events, err = await collect(gw.serve)
        assert err is not None and exe.serve.counters.offers_rejected == 1  # refused on the session
        exe.serve.prices["m"] = 1000
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "ok"
        assert gw.streams_opened == 1  # ...and the same stream carried all three offers
        nursery.cancel_scope.cancel()


async def test_stale_pooled_stream_is_replaced_without_failover(autojump_clock: trio.testing.MockClock) -> None:
    deadlines = Deadlines(accept_s=2.0, session_idle_s=5.0, pool_idle_s=30.0)
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {}, deadlines=deadlines)
        exe = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("hi",))}, deadlines=deadlines)
        await connect_all(gw, [exe])
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "hi"
        await trio.sleep(10)  # the executor ended the idle session; our pooled end does not know yet
        t0 = trio.current_time()
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "hi"
        assert trio.current_time() - t0 < 0.5  # detected at once (end of stream), not by a timeout
        assert gw.streams_opened == 2
        assert gw.serve.counters.failovers == 0
        assert exe.serve.counters.served_for_peers == 2
        nursery.cancel_scope.cancel()


async def test_idle_streams_expire(autojump_clock: trio.testing.MockClock) -> None:
    deadlines = Deadlines(pool_idle_s=3.0, session_idle_s=60.0)
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {}, deadlines=deadlines)
        exe = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("hi",))})
        await connect_all(gw, [exe])
        await collect(gw.serve)
        assert sum(len(v) for v in gw.serve._idle.values()) == 1
        await trio.sleep(5)
        assert gw.serve._idle == {}
        events, err = await collect(gw.serve)
        assert err is None and gw.streams_opened == 2
        nursery.cancel_scope.cancel()


async def test_peer_dies_with_several_session_requests_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {}, deadlines=FAST)
        dying_backend = ScriptedBackend(script=("warm",), max_concurrency=8)
        dying = await start_node(nursery, net, 2, {"m": dying_backend})
        cont = ScriptedBackend(script=(" sat", "."), supports_continuation=True, max_concurrency=8)
        good = await start_node(nursery, net, 3, {"m": cont})
        await connect_all(gw, [dying], stake=10**12)
        await connect_all(gw, [good], stake=1)
        n = 3
        results: list[tuple[list[object], object]] = []

        async def one() -> None:
            results.append(await collect(gw.serve))

        async with trio.open_nursery() as warm:  # three pooled session streams to `dying`
            for _ in range(n):
                warm.start_soon(one)
        assert all(err is None for _, err in results) and gw.streams_opened == n
        results.clear()
        dying_backend.script = ("The", " cat", Hang())

        async def kill_when_all_streaming() -> None:
            while dying_backend.running < n:
                await trio.sleep(0.01)
            await trio.sleep(0.5)
            dying.transport.kill()

        async with trio.open_nursery() as inner:
            inner.start_soon(kill_when_all_streaming)
            for _ in range(n):
                inner.start_soon(one)
        assert len(results) == n
        for events, err in results:
            assert err is None
            assert text_of(events) == "The cat sat."
            assert [e for e in events if isinstance(e, Completed)] == [events[-1]]  # one answer each
            assert [e.executor for e in events if isinstance(e, Started)] == [dying.signer.peer_id, good.signer.peer_id]
        assert all(c[2] == "The cat" for c in cont.calls)
        nursery.cancel_scope.cancel()


def _offer(executor: str, rid: bytes) -> InferRequest:
    """A valid offer from test node 1 (what its ServeService would send)."""
    s = signer(1)
    return InferRequest(
        request_id=rid, network_id=NETWORK, requester=s.peer_id, executor=executor, model="m", kind="chat",
        body=b'{"messages":[{"role":"user","content":"x"}]}', created_ms=int(wall_clock() * 1000),
        continuation="", max_price_per_1k=1000, signature=b"",
    ).signed(s)


async def test_offer_while_one_runs_ends_the_session(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {})
        backend = ScriptedBackend(script=("slow", Hang()))
        exe = await start_node(nursery, net, 2, {"m": backend})
        await gw.transport.connect(exe.transport.listen_addrs()[0])
        fs = FramedStream(await gw.transport.open_stream(exe.signer.peer_id, INFER_PROTOCOL))
        await fs.send(_offer(exe.signer.peer_id, b"\x01" * REQUEST_ID_SIZE))
        assert isinstance(await fs.recv(Accept, timeout=2), Accept)
        assert isinstance(await fs.recv(Chunk, timeout=2), Chunk)
        await fs.send(_offer(exe.signer.peer_id, b"\x02" * REQUEST_ID_SIZE))  # breaks the protocol
        try:
            msg = await fs.recv_or_eof(timeout=2)
        except ConnectionBroken:
            msg = None
        assert msg is None  # the executor closed the session without answering the second offer
        await trio.sleep(0.1)
        assert backend.running == 0  # and stopped the running request
        await fs.aclose()
        nursery.cancel_scope.cancel()


async def test_session_answers_offers_in_turn_on_a_raw_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {})
        exe = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("x", "y"))})
        await gw.transport.connect(exe.transport.listen_addrs()[0])
        fs = FramedStream(await gw.transport.open_stream(exe.signer.peer_id, INFER_PROTOCOL))
        for i in range(3):
            rid = bytes([i + 1]) * REQUEST_ID_SIZE
            await fs.send(_offer(exe.signer.peer_id, rid))
            assert (await fs.recv(Accept, timeout=2)).request_id == rid
            texts = []
            while True:
                msg = await fs.recv((Chunk, Done), timeout=2)
                if isinstance(msg, Done):
                    assert msg.receipt.request_id == rid
                    break
                texts.append(msg.text)
            assert "".join(texts) == "xy"
        await fs.send_eof()
        assert await fs.recv_or_eof(timeout=2) is None  # our end of stream ends the session
        await fs.aclose()
        nursery.cancel_scope.cancel()
