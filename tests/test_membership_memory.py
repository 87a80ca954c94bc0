"""Membership at scale on the memory transport, in virtual time: 50 nodes, one bootstrap."""

from __future__ import annotations

import trio

from p2pserve.config import parse_config
from p2pserve.crypto import Signer
from p2pserve.membership.gossip import GossipService
from p2pserve.membership.table import PeerTable
from p2pserve.sim.cluster import open_cluster
from p2pserve.wire.gossip import Status
from tests.conftest import signer_for
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
        target = GATEWAY.server_params.target_connections
        with trio.fail_after(2 * interval):
            while not all(len(n.transport.connected_peers()) >= target for n in cluster.nodes[1:]):
                await trio.sleep(0.05)

        # 50 nodes stretch the status interval to 50 / max_status_rate (10 s): gossip load per
        # node stays bounded, and peers are expired after 3 of the sender's intervals
        rate = GATEWAY.server_params.max_status_rate
        await trio.sleep(2 * N / rate)
        assert all(n.gossip.current_interval() == N / rate for n in cluster.nodes)
        victim = cluster.nodes[N - 1]
        entry = cluster.nodes[0].peers.get(victim.peer_id)
        assert entry is not None and entry.status.interval_ms == N / rate * 1000
        ttl = cluster.nodes[0].peers.ttl_of(entry)
        assert ttl == 3 * N / rate
        cluster.kill(N - 1)
        killed = trio.current_time()
        survivors = cluster.nodes[: N - 1]
        with trio.fail_after(ttl + N / rate):
            while any(victim.peer_id in n.peers for n in survivors):
                await trio.sleep(0.05)
        print(f"dead node dropped everywhere after {trio.current_time() - killed:.2f} virtual s (ttl {ttl:.0f} s)")
        assert all(len(n.peers) == N - 2 for n in survivors)


async def test_small_networks_keep_the_base_interval(autojump_clock: trio.abc.Clock) -> None:
    async with open_cluster([GATEWAY] * 5, network=MemoryNetwork(seed=2, default_latency=0.01), seed=2) as cluster:
        await wait_converged(cluster.nodes, 4, timeout=30)
        assert all(n.gossip.current_interval() == GATEWAY.server_params.status_interval for n in cluster.nodes)


async def test_membership_is_deterministic(autojump_clock: trio.abc.Clock) -> None:
    async def run() -> list[tuple[str, int]]:
        async with open_cluster([GATEWAY] * 8, network=MemoryNetwork(seed=3, default_latency=0.01), seed=3) as cluster:
            await wait_converged(cluster.nodes, 7, timeout=30)
            return sorted((n.peer_id, len(n.transport.connected_peers())) for n in cluster.nodes)

    assert await run() == await run()


def interval_status(signer: Signer, seq: int, interval_ms: int) -> Status:
    return Status("devnet", signer.peer_id, seq, 0, (), (), True, 0, 0, 0, b"", interval_ms, False, b"", b"").signed(signer)


async def test_maintenance_expires_on_the_deadline_and_sleeps_between(autojump_clock: trio.abc.Clock) -> None:
    """A silent peer goes within a quarter interval after its ttl, a peer whose declared
    interval grew is kept for its longer ttl, and the maintenance loop does not wake every
    tick in between."""
    me, a, b = signer_for("me"), signer_for("a"), signer_for("b")
    changes: list[tuple[str, bool, float]] = []
    async with MemoryNetwork(seed=1).open_transport(me) as transport, trio.open_nursery() as nursery:
        peers = PeerTable(me.peer_id, "devnet", 6.0, ttl_intervals=3)
        g = GossipService(transport, me, peers, interval=2.0)
        g.on_peer_change = lambda pid, up: changes.append((pid, up, trio.current_time()))
        wakes = 0
        real_expire = peers.expire

        def counting_expire(now: float) -> list[str]:
            nonlocal wakes
            wakes += 1
            return real_expire(now)

        peers.expire = counting_expire  # type: ignore[method-assign]
        await nursery.start(g.run)
        t0 = trio.current_time()
        peers.update(interval_status(a, 1, 2000), t0)  # ttl 6 s
        peers.update(interval_status(b, 1, 2000), t0)
        await trio.sleep(3)
        peers.update(interval_status(b, 2, 10_000), trio.current_time())  # ttl now 30 s
        await trio.sleep(40)
        nursery.cancel_scope.cancel()
    (a_gone, b_gone) = [(pid, t - t0) for pid, up, t in changes if not up]
    assert a_gone[0] == a.peer_id and 6.0 < a_gone[1] <= 6.5
    assert b_gone[0] == b.peer_id and 33.0 < b_gone[1] <= 33.5
    assert wakes <= 40 / 2 + 4  # about one wake per base interval (to dial), not one per 0.5 s tick
