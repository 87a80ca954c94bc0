"""A backend that dies or never existed is visible and routed around: checked at start and
every load interval, marked down with its own error (one log line down, one back), not
advertised as accepting, offers for it rejected, local requests fail at once (or go to a
peer), and it serves again once it answers."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio
import trio.testing

from p2pserve.backends.fake import FakeBackend, FakeConfig
from p2pserve.backends.openai import OpenAIBackend
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.errors import BackendResponseError, BackendUnavailable, NoCapacity
from p2pserve.eventlog import event_of
from p2pserve.serving.events import Completed
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

MODEL = "fake-model"
CFG = parse_config({"server_params": {"accept_frequency": 1.0},
                    "models": [{"model_path": MODEL, "backend": "fake", "dispatch_params": {"max_concurrency": 8}}]})


class Switch(httpx.AsyncBaseTransport):
    """The fake backend behind a switch: ``dead`` refuses connections, ``status`` answers
    every request with that HTTP status."""

    def __init__(self) -> None:
        self.inner = FakeBackend(FakeConfig(model=MODEL)).mock_transport()
        self.dead = False
        self.status: int | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.dead:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.status is not None:
            return httpx.Response(self.status, request=request)
        return await self.inner.handle_async_request(request)


async def ask(node: object) -> Completed:
    async with node.serve.submit("chat", MODEL, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}) as events:  # type: ignore[attr-defined]
        async for ev in events:
            if isinstance(ev, Completed):
                return ev
    raise AssertionError("no Completed event")


async def test_check_names_the_backend_and_the_problem(autojump_clock: trio.testing.MockClock) -> None:
    switch = Switch()
    backend = OpenAIBackend(MODEL, "http://backend.invalid:8000", transport=switch, metrics="off")
    await backend.check()
    switch.dead = True
    await trio.sleep(2)
    with pytest.raises(BackendUnavailable, match=r"backend\.invalid:8000 unreachable: ConnectError"):
        await backend.check()
    switch.dead, switch.status = False, 401
    await trio.sleep(2)
    with pytest.raises(BackendResponseError, match="refused our key"):
        await backend.check()
    switch.status = 503
    await trio.sleep(2)
    with pytest.raises(BackendResponseError, match="HTTP 503"):
        await backend.check()
    switch.status = None
    await trio.sleep(2)
    await backend.check()
    await backend.aclose()


async def test_a_dead_backend_is_routed_around_and_comes_back(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve.serving.local")
    switch = Switch()

    def backends(i: int) -> dict[str, object]:
        return {MODEL: build_backend(BackendSpec(MODEL, kind="fake"), transport=switch if i == 0 else None)}

    async with open_cluster([CFG, CFG], network=MemoryNetwork(seed=2, default_latency=0.005), seed=2,
                            backends=backends) as cluster:  # type: ignore[arg-type]
        a, b = cluster[0], cluster[1]
        with trio.fail_after(30):
            while len(a.peers) < 1 or len(b.peers) < 1 or a.ledger.free() == 0 or b.ledger.free() == 0:
                await trio.sleep(0.1)
        assert (await ask(a)).local
        switch.dead = True
        t0 = trio.current_time()
        with trio.fail_after(10):
            while MODEL not in a.serve.local.down:
                await trio.sleep(0.1)
        assert trio.current_time() - t0 <= 3.0  # within a load interval plus the check's cache
        assert "Connection refused" in a.serve.local.down[MODEL]
        assert not a.gossip.make_status().models[0].accepting
        done = await ask(a)  # the user at a is served by b
        assert done.executor == b.peer_id and not done.local
        with trio.fail_after(10):  # b hears a is not accepting, and serves its own users
            while b.peers.get(a.peer_id) is None or b.peers.get(a.peer_id).status.models[0].accepting:  # type: ignore[union-attr]
                await trio.sleep(0.1)
        assert (await ask(b)).local
        switch.dead = False
        with trio.fail_after(10):
            while MODEL in a.serve.local.down:
                await trio.sleep(0.1)
        assert (await ask(a)).local
    lines = [(r.levelname, ev) for r in caplog.records if r.name == "p2pserve.serving.local" and (ev := event_of(r))]
    assert [(level, name, fields["model"]) for level, (name, fields) in lines] == [
        ("WARNING", "backend_down", MODEL), ("WARNING", "backend_up", MODEL)], lines
    assert "Connection refused" in lines[0][1][1]["reason"]


async def test_alone_with_a_dead_backend_fails_at_once_with_its_error(autojump_clock: trio.testing.MockClock) -> None:
    switch = Switch()
    switch.dead = True
    async with open_cluster([CFG], network=MemoryNetwork(seed=3), seed=3,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"), transport=switch)}) as cluster:
        node = cluster[0]
        assert MODEL in node.serve.local.down  # checked at start
        t0 = trio.current_time()
        with pytest.raises(NoCapacity, match="local backend down: .*unreachable"):
            await ask(node)
        assert trio.current_time() - t0 < 1.0
