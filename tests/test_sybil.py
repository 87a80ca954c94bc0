"""Issue 11 A: sybil statuses do not bury honest executors.

One connection injects validly signed statuses of 300 throwaway identities, each advertising
the model at price 0 and an address whose listener never answers (a partitioned memory
transport: dialing it hangs). Before the fix the PoS draw over 300 zero-stake strangers
offered most requests to them first (110 failovers in 9 requests on libp2p); now a peer
learned from gossip is offered nothing before the node reached it, probes of the
throwaway addresses fail and back off, and each failure is logged once a minute at most.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from p2pserve.crypto import Signer, sha256
from p2pserve.membership.gossip import status_topic
from p2pserve.membership.table import PeerTable, UpdateResult
from p2pserve.transport import PubsubMessage
from p2pserve.wire.gossip import ModelStatus, Status
from tests.attack_kit import MODEL, ask, gateway_and_executors
from tests.conftest import signer_for
from transports.memory import MemoryNetwork

SYBILS = 300


def sybil_status(s: Signer, seq: int, addr: str, genesis: bytes) -> Status:
    model = ModelStatus(MODEL, 4096, 0, 0, 0, 0.0, True)
    return Status("devnet", s.peer_id, seq, 0, (addr,), (model,), True, 0, 0, 0, b"", 2000, False, genesis, b"").signed(s)


async def hold_tarpits(net: MemoryNetwork, sybils: list[Signer], task_status: trio.TaskStatus[list[str]]) -> None:
    """A listening memory transport per throwaway identity, until cancelled; started with
    their addresses."""
    async with AsyncExitStack() as stack:
        tarpits = [await stack.enter_async_context(net.open_transport(s)) for s in sybils]
        task_status.started([tp.listen_addrs()[0] for tp in tarpits])
        await trio.sleep_forever()


async def test_sybil_statuses_do_not_bury_honest_executors(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve.membership.gossip")
    net = MemoryNetwork(seed=11, default_latency=0.005)
    async with gateway_and_executors(net, 11) as cluster:
        victim = cluster[0]
        with trio.fail_after(60):
            while len(victim.serve._candidates(MODEL, {}, set(), trio.current_time())) < 3 or victim.ledger.free() == 0:
                await trio.sleep(0.1)
        sybils = [Signer(sha256(b"sybil %d" % i)) for i in range(SYBILS)]
        attacker = Signer(sha256(b"attacker"))
        topic, genesis = status_topic("devnet"), victim.gossip.genesis
        async with trio.open_nursery() as outer:
            # each throwaway identity "listens" where the victim cannot get an answer
            tarpits = await outer.start(hold_tarpits, net, sybils)
            net.partition([victim.peer_id], [s.peer_id for s in sybils])
            async with net.open_transport(attacker) as t:
                await t.connect(victim.transport.listen_addrs()[0])

                async def inject() -> None:
                    seq = 1
                    while True:  # one connection re-sends every throwaway status each interval
                        for s, addr in zip(sybils, tarpits, strict=True):
                            data = sybil_status(s, seq, addr, genesis).encode()
                            t._forward((s.peer_id, seq), PubsubMessage(topic, s.peer_id, data), None, trio.current_time())
                        seq += 1
                        await trio.sleep(2.0)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(inject)
                    with trio.fail_after(10):
                        while sum(s.peer_id in victim.peers for s in sybils) < SYBILS:
                            await trio.sleep(0.05)
                    before = victim.serve.counters.failovers
                    for _ in range(6):
                        t0 = trio.current_time()
                        assert await ask(victim)
                        assert trio.current_time() - t0 < 2.0
                        await trio.sleep(5.0)
                    assert victim.serve.counters.failovers - before <= 3
                    # the throwaway identities are listed, never candidates, and probed with backoff
                    candidates = {e.peer_id for e in victim.serve._candidates(MODEL, {}, set(), trio.current_time())}
                    assert candidates == {n.peer_id for n in cluster.nodes[1:]}
                    assert victim.peers.unreached() >= SYBILS
                    assert victim.gossip.probes_failed >= 30  # a pass every <= 4 intervals, up to reach_target - connected probes each
                    assert victim.gossip.probes_failed <= 2 * SYBILS  # backoff: nobody probed every interval
                    nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage() or "do not answer" in r.getMessage()]
    assert lines, "unreachable advertisers are logged"
    per_peer = [sum(s.peer_id in line for line in lines) for s in sybils]
    assert max(per_peer) == 1  # once a minute at most, and the run is shorter than two


def status_at(s: Signer, addr: str, models: tuple[ModelStatus, ...] = (), *, seq: int = 1) -> Status:
    return Status("devnet", s.peer_id, seq, 0, (addr,), models, True, 0, 0, 0, b"", 2000, False, b"", b"").signed(s)


def test_the_table_is_bounded_per_host_per_source_and_in_all() -> None:
    t = PeerTable("me", "devnet", ttl=60, max_peers=8, max_per_host=3, max_unreached_per_source=4)
    signers = [signer_for(f"p{i}") for i in range(20)]
    on_host = [t.update(status_at(s, f"/ip4/203.0.113.7/tcp/{i}/p2p/{s.peer_id}"), 0.0, gossiped=True) for i, s in enumerate(signers[:5])]
    assert on_host == [UpdateResult.NEW] * 3 + [UpdateResult.HOST_LIMIT] * 2
    via_one = [t.update(status_at(s, f"/ip4/198.51.100.{i}/tcp/1/p2p/{s.peer_id}"), 0.0, gossiped=True, source="relay")
               for i, s in enumerate(signers[5:10])]
    assert via_one == [UpdateResult.NEW] * 4 + [UpdateResult.SOURCE_LIMIT]
    assert len(t) == 7
    # reaching a peer frees its relay's slot
    t.mark_reached(signers[5].peer_id)
    assert t.update(status_at(signers[9], f"/ip4/198.51.100.9/tcp/1/p2p/{signers[9].peer_id}"), 0.0,
                    gossiped=True, source="relay") is UpdateResult.NEW
    # full: a newcomer evicts an unreached peer that serves no model, else is refused
    assert len(t) == 8
    assert t.update(status_at(signers[10], f"/dns4/x{10}/tcp/1/p2p/{signers[10].peer_id}"), 0.0) is UpdateResult.NEW
    assert len(t) == 8 and signers[0].peer_id not in t
    assert t.refusals == 3


def test_unreached_peers_are_not_candidates_and_back_off() -> None:
    t = PeerTable("me", "devnet", ttl=60, probe_first=2.0, probe_cap=8.0)
    model = (ModelStatus("m", 4096, 0, 0, 0, 0.0, True),)
    a, b = signer_for("a"), signer_for("b")
    t.update(status_at(a, f"/memory/1/p2p/{a.peer_id}", model), 0.0, gossiped=True)
    t.update(status_at(b, f"/memory/2/p2p/{b.peer_id}", model), 0.0)  # vouched for by the caller
    assert [e.peer_id for e in t.candidates("m")] == [b.peer_id]
    assert [e.peer_id for e in t.due_probes(0.0, 10)] == [a.peer_id]
    waits = [t.mark_unreachable(a.peer_id, 0.0) for _ in range(4)]
    assert waits == [2.0, 4.0, 8.0, 8.0]
    assert t.due_probes(1.0, 10) == [] and t.next_probe() == 8.0
    t.mark_reached(a.peer_id)
    assert {e.peer_id for e in t.candidates("m")} == {a.peer_id, b.peer_id}
    # expiry keeps the reach state: a peer that comes back is still reached
    t.expire(100.0)
    assert t.update(status_at(a, f"/memory/1/p2p/{a.peer_id}", model, seq=2), 101.0, gossiped=True) is UpdateResult.NEW
    assert a.peer_id in {e.peer_id for e in t.candidates("m")}
