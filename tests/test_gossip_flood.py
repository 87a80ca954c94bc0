"""Issue 11 B: a status flood from one connection does not deny service.

An attacker connected to a gateway publishes valid, freshly signed statuses of its own at
3,400 a second (virtual) for 10 s. The per-origin rate limit in the topic validator drops
them before the signature check and before any subscription queue: honest peers' statuses
keep arriving, nobody expires, requests keep succeeding, and the flood is logged once.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2pserve.crypto import Signer, sha256
from p2pserve.membership.gossip import status_topic
from p2pserve.membership.ratelimit import OffenceLog, TokenBuckets
from p2pserve.membership.verified import SHARED
from p2pserve.wire.gossip import ModelStatus, Status
from tests.attack_kit import MODEL, ask, gateway_and_executors
from transports.memory import MemoryNetwork

RATE, SECONDS, TICK = 3400, 10, 0.01


async def test_a_status_flood_from_one_peer_denies_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve.membership.gossip")
    net = MemoryNetwork(seed=12, default_latency=0.005)
    async with gateway_and_executors(net, 12) as cluster:
        victim = cluster[0]
        honest = {n.peer_id for n in cluster.nodes[1:]}
        with trio.fail_after(60):
            while len(victim.serve._candidates(MODEL, {}, set(), trio.current_time())) < 3 or victim.ledger.free() == 0:
                await trio.sleep(0.1)
        lost: list[str] = []
        victim.gossip.on_peer_change = lambda pid, up: None if up else lost.append(pid)
        attacker = Signer(sha256(b"flooder"))
        model = (ModelStatus(MODEL, 4096, 0, 0, 0, 0.0, True),)
        topic = status_topic("devnet")
        sent = 0
        async with net.open_transport(attacker) as t:
            await t.connect(victim.transport.listen_addrs()[0])
            addr = t.listen_addrs()[0]

            async def flood() -> None:
                nonlocal sent
                seq = 0
                for _ in range(round(SECONDS / TICK)):
                    for _ in range(round(RATE * TICK)):
                        seq += 1
                        st = Status("devnet", attacker.peer_id, seq, 0, (addr,), model, True, 0, 0, 0, b"", 2000, False,
                                    victim.gossip.genesis, b"").signed(attacker)
                        await t.publish(topic, st.encode())
                        sent += 1
                    await trio.sleep(TICK)

            checked0, dropped0 = SHARED.checked, victim.gossip.flood_dropped
            start = trio.current_time()
            served = 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                while trio.current_time() - start < SECONDS:
                    t0 = trio.current_time()
                    assert await ask(victim)
                    assert trio.current_time() - t0 < 2.0
                    served += 1
                    assert honest <= {e.peer_id for e in victim.peers.entries()}
                    await trio.sleep(1.0)
            elapsed = trio.current_time() - start
        assert sent / elapsed >= 3000
        assert served >= 8 and not lost
        dropped = victim.gossip.flood_dropped - dropped0
        assert dropped >= 0.99 * sent  # dropped before the signature check
        assert SHARED.checked - checked0 < 0.01 * sent + 200
        # honest statuses kept arriving: every honest peer was heard from within an interval
        now = trio.current_time()
        assert all(now - victim.peers.get(p).last_seen < 3.0 for p in honest)  # type: ignore[union-attr]
    floods = [r for r in caplog.records if "faster than its interval" in r.getMessage()]
    # one line per node that heard it (the others reach the flooder through its own status) (4 nodes)
    assert 1 <= len(floods) <= 4 and all(attacker.peer_id in r.getMessage() for r in floods)


def test_token_buckets_refill_and_stay_bounded() -> None:
    b = TokenBuckets(period=1.0, burst=2, max_keys=2)
    assert [b.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert not b.peek("a", 0.5) and b.peek("a", 1.0) and b.take("a", 1.0) and not b.take("a", 1.0)
    assert b.take("b", 1.0) and b.take("c", 1.0) and len(b) == 2  # "a" forgotten: a full bucket again
    assert b.take("a", 1.0)
    assert b.take("x", 0.0, period=0.1) and b.take("x", 0.0) and not b.take("x", 0.05, period=0.1)
    assert b.take("x", 0.1, period=0.1)


def test_offence_lines_are_rate_limited_per_peer_and_kind() -> None:
    log = OffenceLog(every_s=60.0, max_keys=2)
    assert log.record("p", "flood", 0.0) == 1
    assert [log.record("p", "flood", t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert log.record("p", "flood", 60.0) == 4
    assert log.record("p", "unreachable", 61.0) == 1
    assert log.record("q", "flood", 61.0) == 1 and len(log) == 2
