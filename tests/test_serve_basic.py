"""Serving over the infer protocol in virtual time: local runs, offload, receipts, price, gateway."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pserve.backends.base import Load, TextDelta
from p2pserve.crypto import sha256
from p2pserve.errors import NoCapacity, UnknownModel
from p2pserve.policies import PolicyParams
from p2pserve.serving.receipts import Bounds, check_receipt, price_for
from p2pserve.serving.service import Completed, Started
from tests.serve_harness import ScriptedBackend, collect, connect_all, start_node, text_of
from transports.memory import MemoryNetwork

BUSY = Load(running=4, queued=2, token_usage=0.95, source="metrics")


async def test_idle_local_model_runs_locally(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        a = await start_node(nursery, net, 1, {"m": ScriptedBackend()})
        events, err = await collect(a.serve)
        assert err is None
        assert events[0] == Started(a.signer.peer_id, local=True)
        assert text_of(events) == "Hello world"
        done = events[-1]
        assert isinstance(done, Completed) and done.local and done.receipt is None
        assert (done.prompt_tokens, done.completion_tokens, done.finish_reason) == (3, 2, "stop")
        assert a.streams_opened == 0
        assert a.serve.counters.local == 1
        nursery.cancel_scope.cancel()


async def test_gateway_offloads_and_verifies_the_receipt(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {})
        backend = ScriptedBackend(script=("one", " two", " three"))
        ex = await start_node(nursery, net, 2, {"m": backend}, prices={"m": 1500})
        await connect_all(gw, [ex])
        for _ in range(5):
            events, err = await collect(gw.serve)
            assert err is None
            assert events[0] == Started(ex.signer.peer_id, local=False)
            assert text_of(events) == "one two three"
            done = events[-1]
            assert isinstance(done, Completed) and not done.local and done.executor == ex.signer.peer_id
            r = done.receipt
            assert r is not None and not r.partial
            r.verify()
            assert r.executor == ex.signer.peer_id and r.requester == gw.signer.peer_id
            assert r.response_hash == sha256(b"one two three")
            assert r.completion_tokens == 3 and r.price == price_for(3, 1500) == 5
        assert gw.receipts == [e for e in gw.receipts if not e.partial] and len(gw.receipts) == 5
        assert len({r.request_id for r in gw.receipts}) == 5
        assert gw.serve.counters.offloaded == 5 and ex.serve.counters.served_for_peers == 5
        assert len(backend.calls) == 5
        nursery.cancel_scope.cancel()


async def test_receipt_check_catches_every_mismatch(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {})
        ex = await start_node(nursery, net, 2, {"m": ScriptedBackend()})
        await connect_all(gw, [ex])
        events, _ = await collect(gw.serve)
        done = events[-1]
        assert isinstance(done, Completed) and done.receipt is not None
        nursery.cancel_scope.cancel()
    # the request itself is not kept; rebuild what check_receipt needs from the receipt
    import dataclasses

    from p2pserve.errors import RemoteProtocolError
    from p2pserve.wire.infer import InferRequest

    r = done.receipt
    fake_req = InferRequest(r.request_id, r.network_id, r.requester, r.executor, "m", "chat", b"{}", 0, "", 1000, b"")
    try:
        check_receipt(r, fake_req, "Hello world", partial=False, bounds=Bounds.of({}, 2, "", 4096))
    except RemoteProtocolError as exc:
        assert "request hash" in str(exc)
    else:
        raise AssertionError("a receipt for another request must not verify")
    tampered = dataclasses.replace(r, price=r.price + 1)
    try:
        tampered.verify()
    except RemoteProtocolError:
        pass
    else:
        raise AssertionError


async def test_busy_node_offloads_per_policy(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        params = PolicyParams(offload_frequency=1.0, queue_frequency=0.0, accept_frequency=1.0)
        a = await start_node(nursery, net, 1, {"m": ScriptedBackend(load_value=BUSY)}, params=params)
        b = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("remote",))})
        await connect_all(a, [b])
        events, err = await collect(a.serve)
        assert err is None and text_of(events) == "remote"
        assert a.serve.counters.local == 0 and a.serve.counters.offloaded == 1
        nursery.cancel_scope.cancel()


async def test_unknown_model_is_404(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        a = await start_node(nursery, net, 1, {"m": ScriptedBackend()})
        events, err = await collect(a.serve, model="nope")
        assert events == [] and isinstance(err, UnknownModel) and err.status_code == 404
        nursery.cancel_scope.cancel()


async def test_gateway_without_executors_answers_503_after_the_wait_budget(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {}, params=PolicyParams(max_wait_s=5.0))
        ex = await start_node(nursery, net, 2, {"m": ScriptedBackend()}, policy="local-only")
        await connect_all(gw, [ex])  # known, but it refuses every offer
        t0 = trio.current_time()
        events, err = await collect(gw.serve)
        assert events == [] and isinstance(err, NoCapacity) and err.status_code == 503
        assert "no capacity for model 'm'" in str(err) and "rejected (busy)" in str(err)
        assert 4.0 <= trio.current_time() - t0 <= 5.5
        assert gw.serve.backlog() == 0 and gw.serve.counters.failures == 1
        nursery.cancel_scope.cancel()


async def test_many_requests_in_flight_each_answered_once(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {})
        executors = [
            await start_node(nursery, net, 2 + i, {"m": ScriptedBackend(script=(f"x{i}",), max_concurrency=100)})
            for i in range(3)
        ]
        await connect_all(gw, executors)
        results: list[tuple[list[object], object]] = []

        async def one() -> None:
            results.append(await collect(gw.serve))

        async with trio.open_nursery() as inner:
            for _ in range(30):
                inner.start_soon(one)
        assert len(results) == 30
        for events, err in results:
            assert err is None
            assert sum(isinstance(e, Started) for e in events) == 1
            assert sum(isinstance(e, Completed) for e in events) == 1
            assert len([e for e in events if isinstance(e, TextDelta)]) == 1
        assert len(gw.receipts) == 30
        assert sum(e.serve.counters.served_for_peers for e in executors) == 30
        nursery.cancel_scope.cancel()


async def test_model_status_for_gossip(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        a = await start_node(nursery, net, 1, {"m": ScriptedBackend(), "busy": ScriptedBackend(model="busy", load_value=BUSY)}, prices={"m": 7, "busy": 9})
        st = {m.name: m for m in a.serve.model_status()}
        assert st["m"].accepting and st["m"].price_per_1k == 7 and st["m"].running == 0
        assert not st["busy"].accepting and st["busy"].token_usage == 0.95 and st["busy"].queued == 2
        nursery.cancel_scope.cancel()


def test_automatic_request_keys_use_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """One counter per distinct body would grow without bound on a long-running gateway."""
    from collections import Counter

    from p2pserve.serving import service

    monkeypatch.setattr(service, "_MAX_AUTO_KEYS", 4)
    svc = service.ServeService.__new__(service.ServeService)
    svc._keys = Counter()
    first = [svc._auto_key(b"same"), svc._auto_key(b"same")]
    assert first[0].endswith("/1") and first[1].endswith("/2")  # repeats are told apart
    for i in range(100):
        svc._auto_key(str(i).encode())
    assert len(svc._keys) <= 4
