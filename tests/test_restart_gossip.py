"""A restarted node's gossip reaches its peers at once (issue 11, item 5: "after a SIGKILL
restart a node's new blocks took ~25 s to reach peers").

Cause: gossipsub names a message by (origin, seqno), and py-libp2p 0.8.1 starts a host's
seqno at the wall-clock *second*, +1 per message. A node that published more than one
message a second (a status every 0.5 s, its blocks) runs ahead of the clock, so after a
restart its new seqnos repeat ones it used before, and every peer drops those messages as
already seen (``seen_ttl`` 120 s): statuses and blocks alike, until the new seqnos pass
the old ones or the old IDs expire. Real libp2p hosts on 127.0.0.1, bounded by
``trio.fail_after``; no sleeps as pass conditions."""

from __future__ import annotations

import hashlib

import pytest
import trio

from p2pserve.crypto import Signer
from p2pserve.transport import PeerEvent, Subscription
from transports.libp2p import Libp2pTransport, open_libp2p_transport

pytestmark = pytest.mark.libp2p

TOPIC = "restart-gossip"
BURST = 300
"""Messages published before the restart: ~300 s ahead of the wall-clock second."""


def signer_for(i: int) -> Signer:
    return Signer(hashlib.sha256(b"restart-gossip-%d" % i).digest())


async def run_host(i: int, stop: trio.Event, task_status: trio.TaskStatus[Libp2pTransport]) -> None:
    """One host, entered and left by this task (libp2p's requirement), until ``stop``."""
    async with open_libp2p_transport(signer_for(i), ["/ip4/127.0.0.1/tcp/0"], gossip_heartbeat=0.5) as t:
        task_status.started(t)
        await stop.wait()


async def first_with(sub: Subscription, prefix: bytes) -> None:
    async for msg in sub:
        if msg.data.startswith(prefix):
            return


async def publish_until_seen(src: Libp2pTransport, sub: Subscription, prefix: bytes, limit: float) -> float:
    """Publish ``prefix + n`` every 0.2 s until ``sub`` gets one (a mesh forms in heartbeats);
    the seconds it took, or ``limit`` + 1 when nothing came."""
    t0 = trio.current_time()
    with trio.move_on_after(limit):
        async with trio.open_nursery() as nursery:
            async def publish() -> None:
                n = 0
                while True:
                    await src.publish(TOPIC, prefix + b"%d" % n)
                    n += 1
                    await trio.sleep(0.2)

            nursery.start_soon(publish)
            await first_with(sub, prefix)
            nursery.cancel_scope.cancel()
            return trio.current_time() - t0
    return limit + 1


# Strict: once transports/libp2p/_open.py starts the seqno above anything sent before (e.g.
# ``pubsub.counter = SYSTEM_CLOCK.wall_ms() * 1000`` after ``Pubsub(...)``), this passes and
# the marker must go. Measured: 0.02 s with that change, > 15 s (the limit) without it.
async def test_a_restarted_host_is_heard_at_once_after_publishing_fast() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            stop_b, stop_a = trio.Event(), trio.Event()
            b = await nursery.start(run_host, 2, stop_b)
            a = await nursery.start(run_host, 1, stop_a)
            await b.connect(a.listen_addrs()[0])
            got = await b.subscribe(TOPIC)
            await a.subscribe(TOPIC)
            assert await publish_until_seen(a, got, b"warm-up ", 15) <= 15, "no mesh between two fresh hosts"
            for n in range(BURST):  # far more than one message a second, each seen by b
                await a.publish(TOPIC, b"burst %d" % n)
                await first_with(got, b"burst %d" % n)

            events = b.peer_events()
            stop_a.set()  # a leaves (b sees it go, as after a kill); the same identity comes back on a new port
            async for ev in events:
                if ev == PeerEvent(a.peer_id, False):
                    break
            stop_a2 = trio.Event()
            a2 = await nursery.start(run_host, 1, stop_a2)
            assert a2.peer_id == a.peer_id
            await b.connect(a2.listen_addrs()[0])
            await a2.subscribe(TOPIC)
            took = await publish_until_seen(a2, got, b"after restart ", 15)
            print(f"first message after the restart arrived in {took:.2f} s")
            assert took <= 15, "the restarted host's messages were dropped as already seen"
            stop_a2.set()
            stop_b.set()
