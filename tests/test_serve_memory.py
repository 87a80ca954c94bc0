"""The serving path on the real in-process transport (transports.memory) with link latency,
peer death and partitions, in virtual time."""

from __future__ import annotations

import trio
import trio.testing

from p2pserve.errors import NoCapacity
from p2pserve.policies import PolicyParams
from p2pserve.serving.service import Completed, Deadlines, Started
from tests.serve_harness import Hang, ScriptedBackend, collect, connect_all, make_status, start_node, text_of
from transports.memory import MemoryNetwork

FAST = Deadlines(accept_s=2.0, first_token_s=5.0, idle_s=3.0)


async def test_offload_over_links_with_latency(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(seed=1, default_latency=0.05)
        gw = await start_node(nursery, net, 1, {})
        ex = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("a", "b", "c"))})
        await connect_all(gw, [ex])
        t0 = trio.current_time()
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "abc"
        done = events[-1]
        assert isinstance(done, Completed) and done.receipt is not None and done.receipt.completion_tokens == 3
        # stream open (1 RTT) + offer → accept, chunks, done pipelined (1 RTT) = 0.2 s
        assert 0.15 <= trio.current_time() - t0 < 0.3
        nursery.cancel_scope.cancel()


async def test_executor_killed_mid_stream_continues_elsewhere(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(seed=2, default_latency=0.01)
        gw = await start_node(nursery, net, 1, {}, deadlines=FAST)
        dying = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("x", "y", Hang()))})
        other = await start_node(nursery, net, 3, {"m": ScriptedBackend(script=("z",), supports_continuation=True)})
        await connect_all(gw, [dying])
        await connect_all(gw, [other])
        # make the dying peer the PoS favourite
        gw.serve.peers.update(make_status(dying.signer, stake=10**12, seq=2), trio.current_time())
        events: list[object] = []
        async with trio.open_nursery() as inner:

            async def killer() -> None:
                while sum(1 for e in events if not isinstance(e, Started)) < 2:
                    await trio.sleep(0.01)
                dying.transport.kill()

            inner.start_soon(killer)
            async with gw.serve.submit("completion", "m", {"prompt": "p"}) as chan:
                async for ev in chan:
                    events.append(ev)
        assert text_of(events) == "xyz"
        assert [e.executor for e in events if isinstance(e, Started)] == [dying.signer.peer_id, other.signer.peer_id]
        nursery.cancel_scope.cancel()


async def test_partitioned_executor_never_answers_then_503(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(seed=3, dial_timeout=1.0)
        gw = await start_node(nursery, net, 1, {}, params=PolicyParams(max_wait_s=4.0), deadlines=FAST)
        ex = await start_node(nursery, net, 2, {"m": ScriptedBackend()})
        await connect_all(gw, [ex])
        net.partition([gw.signer.peer_id], [ex.signer.peer_id])
        t0 = trio.current_time()
        events, err = await collect(gw.serve)
        assert events == [] and isinstance(err, NoCapacity)
        assert trio.current_time() - t0 <= 4.5
        net.heal()
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "Hello world"
        nursery.cancel_scope.cancel()
