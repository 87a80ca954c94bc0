"""Ledger sync on the memory transport (virtual time): gossip spreads new blocks, a late
joiner and an offline node catch up, a gap is filled via pending, wrong-network gossip is
dropped."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from p2pserve.crypto import Signer
from p2pserve.ledger.blocks import Block, StakeBody
from p2pserve.ledger.rules import fingerprint
from p2pserve.ledger.store import LedgerStore
from p2pserve.ledger.sync import LedgerSync
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, World
from p2pserve.wire.sync import blocks_topic
from transports.memory import MemoryNetwork, MemoryTransport


def history(seed: int, steps: int) -> World:
    w = World(random.Random(seed))
    for n in ("a", "b", "c"):
        w.open(n, staked=CREDIT)
    for _ in range(steps):
        w.random_step(["a", "b", "c"])
    return w


@asynccontextmanager
async def node(net: MemoryNetwork, name: str, store: LedgerStore) -> AsyncIterator[tuple[MemoryTransport, LedgerSync]]:
    async with net.open_transport(Signer(name.encode().ljust(32, b"\0"))) as t:
        sync = LedgerSync(t, store, timeout=5.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(sync.run)
            yield t, sync
            nursery.cancel_scope.cancel()


async def test_late_joiner_catches_up_and_gossip_spreads(autojump_clock: trio.testing.MockClock) -> None:
    w = history(1, 60)
    net = MemoryNetwork(seed=1, default_latency=0.01)
    full = LedgerStore(":memory:", TEST_PARAMS)
    full.append_many(w.log)
    late = LedgerStore(":memory:", TEST_PARAMS)
    async with node(net, "full", full) as (t1, s1), node(net, "late", late) as (t2, _):
        await t2.connect(t1.listen_addrs()[0])
        await trio.sleep(2)
        assert fingerprint(late.state) == fingerprint(full.state)
        # a new block published by one node reaches the other by gossip
        await s1.publish(w.add(w.block("a", StakeBody(1))))
        await trio.sleep(1)
        assert fingerprint(late.state) == fingerprint(full.state) == fingerprint(w.state)


async def test_offline_node_catches_up_on_reconnect(autojump_clock: trio.testing.MockClock) -> None:
    w = history(2, 40)
    net = MemoryNetwork(seed=2, default_latency=0.01)
    a_store, b_store = LedgerStore(":memory:", TEST_PARAMS), LedgerStore(":memory:", TEST_PARAMS)
    a_store.append_many(w.log[:10])
    b_store.append_many(w.log[:10])
    async with node(net, "a", a_store) as (ta, sa):
        async with node(net, "b", b_store) as (tb, _):
            await tb.connect(ta.listen_addrs()[0])
            await trio.sleep(1)
        # b is offline while a writes the rest
        for block in w.log[10:]:
            a_store.append(block)
        assert fingerprint(b_store.state) != fingerprint(a_store.state)
        async with node(net, "b", b_store) as (tb, _):
            await tb.connect(ta.listen_addrs()[0])
            await trio.sleep(2)
            assert fingerprint(b_store.state) == fingerprint(a_store.state)


async def test_gossiped_block_with_a_gap_waits_then_fills(autojump_clock: trio.testing.MockClock) -> None:
    w = history(3, 30)
    net = MemoryNetwork(seed=3, default_latency=0.01)
    src = LedgerStore(":memory:", TEST_PARAMS)
    src.append_many(w.log)
    dst = LedgerStore(":memory:", TEST_PARAMS)
    dst.append_many(w.log[:3])  # only the opens
    async with node(net, "src", src) as (ts, ss), node(net, "dst", dst) as (td, sd):
        # no connect-time pull: dst is connected only after a block with a gap is gossiped
        sd._syncing.add(ts.peer_id)
        await td.connect(ts.listen_addrs()[0])
        await trio.sleep(0.5)
        sd._syncing.discard(ts.peer_id)
        await ss.publish(w.add(w.block("b", StakeBody(1))))
        await trio.sleep(2)
        assert dst.pending_count() == 0
        assert fingerprint(dst.state) == fingerprint(src.state) == fingerprint(w.state)


async def test_validator_drops_other_networks_and_garbage(autojump_clock: trio.testing.MockClock) -> None:
    w = history(4, 5)
    net = MemoryNetwork(seed=4)
    store = LedgerStore(":memory:", TEST_PARAMS)
    async with node(net, "x", store) as (t, s):
        alien: Block = dataclasses.replace(w.log[0], network_id="othernet")
        from p2pserve.transport import PubsubMessage

        topic = blocks_topic(TEST_PARAMS.network_id, TEST_PARAMS.digest())
        assert not s._validate(PubsubMessage(topic, "p", alien.encode()))
        assert not s._validate(PubsubMessage(topic, "p", b"\x93garbage"))
        assert s._validate(PubsubMessage(topic, "p", w.log[0].encode()))
        await t.publish(topic, alien.encode())
        await trio.sleep(1)
        assert store.count() == 0
