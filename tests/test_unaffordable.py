"""A request no peer could be paid for fails at once with 402 and the numbers (was: a
misleading 503 after the whole 30 s wait); an affordable one goes through as before. Before
the node's ledger account is open (it just joined) that is a 503 saying so and to retry."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.errors import AccountNotOpen, InsufficientCredit
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


# --- a node whose ledger account is not open yet -------------------------------------------------


async def test_before_its_account_opens_a_node_says_so_with_a_503(autojump_clock: trio.testing.MockClock) -> None:
    """A node that just joined cannot pay until a peer has confirmed its chain and its account
    opened: a priced request then is a 503 saying so and when to retry (was: 402 "this node
    can pay 0 now", as if it were broke); once the account is open, it is served."""
    confirmed = trio.Event()

    def hold_confirmation(node: object, index: int) -> None:
        if index == 1:  # the newcomer: no peer confirms its chain until the test says so
            sync = node.ledger.sync  # type: ignore[attr-defined]
            pull = sync.pull_from

            async def held(peers: list[str]) -> bool:
                return bool(await pull(peers)) if confirmed.is_set() else False

            sync.pull_from = held

    async with open_cluster([PRICEY], network=MemoryNetwork(seed=7, default_latency=0.01), seed=7,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))},
                            prepare=hold_confirmation) as cluster:
        gw = await cluster.add(GATEWAY)
        with trio.fail_after(30):
            while not gw.peers.candidates(MODEL):
                await trio.sleep(0.1)
        assert not gw.ledger.opened
        t0 = trio.current_time()
        with pytest.raises(AccountNotOpen) as info:
            await ask(gw, 5)
        assert trio.current_time() - t0 < 0.1 and info.value.status_code == 503
        msg = str(info.value)
        assert "ledger account is not open" in msg and "retry in a few seconds" in msg and "Retry-After: 5" in msg
        assert "can pay" not in msg
        confirmed.set()
        with trio.fail_after(30):
            while not gw.ledger.opened or gw.ledger.free() == 0:
                await trio.sleep(0.1)
        assert await ask(gw, 5)
        with pytest.raises(InsufficientCredit):  # open and short of credit: the 402 as before
            await ask(gw, 6_000)


class Purse:
    """A wallet with ``free`` micro-credits whose account opens when the test says."""

    def __init__(self, free: int, opened: bool) -> None:
        self.free, self.opened = free, opened

    def hold(self, amount: int) -> None:
        return None

    def can_afford(self, price: int) -> bool:
        return price <= self.free

    def available(self) -> int:
        return self.free

    def admit(self, requester: str, worst_case: int) -> str:
        return "no-account"


async def test_only_a_wallet_that_says_it_is_not_open_gets_the_503(autojump_clock: trio.testing.MockClock) -> None:
    from tests.serve_harness import ScriptedBackend, collect, connect_all, start_node

    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        purse = Purse(0, opened=False)
        gw = await start_node(nursery, net, 0, wallet=purse)
        ex = await start_node(nursery, net, 1, {"m": ScriptedBackend()})
        await connect_all(gw, [ex])
        _, err = await collect(gw.serve)
        assert isinstance(err, AccountNotOpen)
        purse.opened = True
        _, err = await collect(gw.serve)
        assert isinstance(err, InsufficientCredit) and "can pay 0 now" in str(err)
        nursery.cancel_scope.cancel()


def test_the_api_sends_retry_after_with_an_account_not_open_503() -> None:
    from p2pserve.api.openai import _error_response

    response = _error_response(AccountNotOpen("this node's ledger account is not open yet"))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert "retry-after" not in _error_response(InsufficientCredit("too dear")).headers
