"""PoS uses the ledger's stake: a peer that claims more stake in its status than it has on
the ledger is routed as if it had only its ledger stake."""

from __future__ import annotations

import dataclasses
import random

import trio
import trio.testing

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.routing import pos_order
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

MODEL = "fake-model"


def cfg(stake: float) -> object:
    return parse_config({"server_params": {"accept_frequency": 1.0}, "ledger_params": {"initial_staked": stake},
                         "models": [{"model_path": MODEL, "backend": "fake"}]})


async def test_claimed_stake_is_capped_by_the_ledger(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster([parse_config({"models": []}), cfg(100), cfg(100)], network=MemoryNetwork(seed=9), seed=9,
                            backends=lambda i: {} if i == 0 else {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as c:
        liar, honest = c[1], c[2]
        real_state = liar.local_state
        liar.gossip.local_state = lambda: dataclasses.replace(real_state(), stake=10**15)  # type: ignore[method-assign]
        gw = c[0]
        with trio.fail_after(30):
            while not (gw.ledger.stake_of(liar.peer_id) and gw.ledger.stake_of(honest.peer_id)
                       and (e := gw.peers.get(liar.peer_id)) is not None and e.status.stake == 10**15):
                await trio.sleep(0.1)
        entries = gw.peers.candidates(MODEL)
        assert {gw._stake_of(e) for e in entries} == {100 * 10**6}
        rng = random.Random(1)
        firsts = [pos_order(entries, rng, 0.0, stake_of=gw._stake_of)[0] for _ in range(2000)]
        share = firsts.count(liar.peer_id) / len(firsts)
        assert 0.45 < share < 0.55  # equal ledger stakes: equal odds, whatever the liar claims


async def test_a_node_without_credit_serves_locally_and_says_so(autojump_clock: trio.testing.MockClock) -> None:
    broke = parse_config({"server_params": {"policy": "always-offload"}, "ledger_params": {"initial_credit": 0},
                          "models": [{"model_path": MODEL, "backend": "fake"}]})
    peer = parse_config({"server_params": {"accept_frequency": 1.0}, "ledger_params": {"initial_credit": 0},
                         "models": [{"model_path": MODEL, "backend": "fake"}]})
    async with open_cluster([broke, peer], network=MemoryNetwork(seed=4), seed=4,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as c:
        node = c[0]
        with trio.fail_after(30):
            while not (node.peers.candidates(MODEL) and node.ledger.store.state.account(node.peer_id)):
                await trio.sleep(0.1)
        executors = []
        async with node.serve.submit("chat", MODEL, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4}) as events:
            async for ev in events:
                if type(ev).__name__ == "Completed":
                    executors.append(ev.executor)
        assert executors == [node.peer_id]
        status = node.status()
        assert status["offloading"]["possible"] is False
        assert "no free credit" in status["offloading"]["reason"]


async def test_metrics_endpoint_text(autojump_clock: trio.testing.MockClock) -> None:
    from p2pserve.backends.metrics import parse_prometheus

    async with open_cluster([cfg(10)], network=MemoryNetwork(seed=1), seed=1,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as c:
        with trio.fail_after(30):
            while c[0].ledger.staked() == 0:
                await trio.sleep(0.1)
        samples = {(s.name, s.label("model")): s.value for s in parse_prometheus(c[0].metrics())}
        assert samples[("p2pserve_ledger_staked_credits", None)] == 10.0
        assert samples[("p2pserve_model_running", MODEL)] == 0
        assert ("p2pserve_requests_total", None) in samples
