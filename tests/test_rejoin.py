"""Rejoin: nodes keep redialing their bootstrap and the peers they lost, with backoff, while
below their connection target, so a restarted node (the bootstrap node itself included,
which has no bootstrap list of its own) is back in the mesh within a few status
intervals, and a node whose bootstrap was down joins once it is up."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2pserve.config import parse_config
from p2pserve.membership.redial import Redialer, peer_of
from p2pserve.sim.cluster import Cluster, open_cluster
from transports.memory import MemoryNetwork

CFG = parse_config({"models": []})
A = "/memory/1/p2p/12D3KooWA"
B = "/memory/2/p2p/12D3KooWB"
BOOT = "/memory/9/p2p/12D3KooWBoot"


def test_backoff_doubles_to_its_cap_and_bootstrap_comes_first() -> None:
    r = Redialer([BOOT], first=2, cap=10)
    r.lost([A], now=0)
    assert r.due(0, set(), 5) == [BOOT]  # A's first retry is 2 s after it was lost
    assert r.due(2, set(), 5) == [BOOT, A]
    waits = [r.result(BOOT, False, t) for t in (0, 2, 6, 14, 24)]
    assert waits == [2, 4, 8, 10, 10]
    assert r.due(25, {"12D3KooWBoot"}, 5) == [A]  # a connected peer is not dialed
    assert r.result(A, True, 25) == 0 and r.due(100, set(), 5) == [BOOT]  # reached: forgotten
    r.result(BOOT, True, 100)
    assert r.result(BOOT, False, 200) == 2  # a success starts the backoff over
    assert peer_of(A) == "12D3KooWA" and peer_of("/ip4/127.0.0.1/tcp/1") is None


def test_lost_peers_are_bounded_and_forgotten() -> None:
    r = Redialer([], first=1, cap=4, remember_s=100, max_entries=3)
    for i in range(5):
        r.lost([f"/memory/{i}/p2p/P{i}"], now=i)
    assert len(r) == 3 and r.due(10, set(), 9) == ["/memory/2/p2p/P2", "/memory/3/p2p/P3", "/memory/4/p2p/P4"]
    assert r.due(200, set(), 9) == []  # silent for longer than remember_s
    with pytest.raises(ValueError):
        Redialer([], first=0)


async def wait_mesh(cluster: Cluster, limit: float) -> float:
    """Virtual seconds until every live node knows every other (fails after ``limit``)."""
    t0 = trio.current_time()
    nodes = cluster.alive()
    with trio.fail_after(limit):
        while not all(len(n.peers) == len(nodes) - 1 for n in nodes):
            await trio.sleep(0.1)
    return trio.current_time() - t0


async def test_a_restarted_bootstrap_node_is_back_in_the_mesh(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster([CFG] * 4, network=MemoryNetwork(seed=4, default_latency=0.01), seed=4) as cluster:
        await wait_mesh(cluster, 60)
        assert not cluster[0].gossip.bootstrap  # node 0 is the bootstrap and has none of its own
        cluster.kill(0)
        await trio.sleep(120)  # far longer than the peer ttl: everyone forgot node 0
        assert all(cluster[0].peer_id not in n.peers for n in cluster.alive())
        await cluster.restart(0)
        took = await wait_mesh(cluster, 60)
        assert took <= 5 * CFG.server_params.status_interval, took


async def test_a_node_whose_bootstrap_was_down_joins_once_it_is_up(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve.membership.gossip")
    async with open_cluster([CFG] * 3, network=MemoryNetwork(seed=5, default_latency=0.01), seed=5) as cluster:
        await wait_mesh(cluster, 60)
        cluster.kill(0)
        cluster.kill(1)
        await trio.sleep(60)
        await cluster.restart(1)  # its only bootstrap, node 0, is down; node 2 it never knew by address
        await trio.sleep(30)
        assert len(cluster[1].peers) <= 1
        await cluster.restart(0)
        took = await wait_mesh(cluster, 60)
        assert took <= 5 * CFG.server_params.status_interval, took
    unreachable = [r.getMessage() for r in caplog.records if "unreachable (" in r.getMessage()]
    assert 2 <= len(unreachable) <= 6, unreachable  # nodes 1 and 2 say so, at most once a minute each
