"""A request no peer could be paid for fails at once with 402 and the numbers (was: a
misleading 503 after the whole 30 s wait); an affordable one goes through as before."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.errors import InsufficientCredit
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

MODEL = "fake-model"
GATEWAY = parse_config({"models": []})
PRICEY = parse_config({"server_params": {"accept_frequency": 1.0},
                       "models": [{"model_path": MODEL, "backend": "fake", "price_per_1k": 200.0,
                                   "dispatch_params": {"max_concurrency": 4}}]})


async def ask(node: object, max_tokens: int) -> str:
    text = ""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    async with node.serve.submit("chat", MODEL, body) as events:  # type: ignore[attr-defined]
        async for ev in events:
            text += getattr(ev, "text", "")
    return text


async def test_an_unaffordable_max_tokens_is_a_402_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster([GATEWAY, PRICEY], network=MemoryNetwork(seed=7, default_latency=0.01), seed=7,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))} if i else {}) as cluster:
        gw = cluster[0]
        with trio.fail_after(30):
            while not gw.peers.candidates(MODEL) or not gw.ledger.writable or gw.ledger.free() == 0:
                await trio.sleep(0.1)
        t0 = trio.current_time()
        with pytest.raises(InsufficientCredit) as info:
            await ask(gw, 6_000)  # up to 6,000 tokens at 200 per 1k = 1,200 credits; it has 1,000
        assert trio.current_time() - t0 < 0.1
        msg = str(info.value)
        assert "up to 1,200 credits" in msg and "6000 tokens" in msg and "200 per 1k" in msg and "can pay 1,000" in msg
        assert info.value.status_code == 402
        assert await ask(gw, 5)  # 1 credit at worst: served
