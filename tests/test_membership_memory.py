"""Membership at scale on the memory transport, in virtual time: 50 nodes, one bootstrap."""

from __future__ import annotations

import trio

from p2pserve.config import parse_config
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

N = 50
GATEWAY = parse_config({"models": []})  # membership needs no model; defaults: interval 2 s, ttl 6 s


async def wait_converged(nodes: list, expected: int, timeout: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not all(len(n.peers) == expected for n in nodes):
            await trio.sleep(0.05)
    return trio.current_time() - start


async def test_fifty_nodes_converge_and_drop_a_dead_one(autojump_clock: trio.abc.Clock) -> None:
    net = MemoryNetwork(seed=7, default_latency=0.02)
    start = trio.current_time()
    async with open_cluster([GATEWAY] * N, network=net, seed=7) as cluster:
        started = trio.current_time() - start
        took = await wait_converged(cluster.nodes, N - 1, timeout=60)
        interval = GATEWAY.server_params.status_interval
        print(f"{N} nodes started in {started:.2f} virtual s, converged {took:.2f} virtual s later")
        # every node knows every other within two status intervals of the last start
        assert took <= 2 * interval
        # nodes dial learned peers: nobody relies on the bootstrap alone
        assert all(len(n.transport.connected_peers()) >= n.config.server_params.target_connections for n in cluster.nodes[1:])

        victim = cluster.nodes[N - 1]
        cluster.kill(N - 1)
        killed = trio.current_time()
        survivors = cluster.nodes[: N - 1]
        ttl = GATEWAY.server_params.peer_ttl
        with trio.fail_after(ttl + interval):
            while any(victim.peer_id in n.peers for n in survivors):
                await trio.sleep(0.05)
        print(f"dead node dropped everywhere after {trio.current_time() - killed:.2f} virtual s")
        assert all(len(n.peers) == N - 2 for n in survivors)


async def test_membership_is_deterministic(autojump_clock: trio.abc.Clock) -> None:
    async def run() -> list[tuple[str, int]]:
        async with open_cluster([GATEWAY] * 8, network=MemoryNetwork(seed=3, default_latency=0.01), seed=3) as cluster:
            await wait_converged(cluster.nodes, 7, timeout=30)
            return sorted((n.peer_id, len(n.transport.connected_peers())) for n in cluster.nodes)

    assert await run() == await run()
