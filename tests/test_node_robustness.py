"""Bad input never takes a node down: garbage, truncated, oversized and forged messages on
every stream protocol and gossip topic are refused, and the node goes on serving."""

from __future__ import annotations

import dataclasses

import trio
import trio.testing

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.crypto import Signer, sha256
from p2pserve.errors import ConnectionBroken, PeerTimeout, RemoteProtocolError
from p2pserve.ledger.rules import fingerprint
from p2pserve.ledger.sync import SYNC_PROTOCOL, blocks_topic
from p2pserve.membership.gossip import status_topic
from p2pserve.net.framed import FramedStream
from p2pserve.sim.cluster import open_cluster
from p2pserve.wire.framing import encode_uvarint
from p2pserve.wire.gossip import Status
from p2pserve.wire.infer import INFER_PROTOCOL
from transports.memory import MemoryNetwork

MODEL = "fake-model"
CFG = parse_config({"server_params": {"accept_frequency": 1.0},
                    "models": [{"model_path": MODEL, "backend": "fake", "dispatch_params": {"max_concurrency": 8}}]})
GARBAGE = [b"", b"\x00", b"\xff" * 11, encode_uvarint(5 * 1024 * 1024) + b"x" * 100, encode_uvarint(10) + b"\x93\x01",
           encode_uvarint(3) + b"\x93\x0a\x01", b"\xc1" * 64, encode_uvarint(4) + b"\x94\x01\x02\x03"]


async def ask(node: object) -> str:
    text = ""
    async with node.serve.submit("chat", MODEL, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}) as events:  # type: ignore[attr-defined]
        async for ev in events:
            text += getattr(ev, "text", "")
    return text


async def test_garbage_everywhere_then_still_serving(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=5, default_latency=0.005)
    async with open_cluster([CFG, CFG], network=net, seed=5,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as cluster:
        victim = cluster[0]
        with trio.fail_after(30):
            while len(victim.peers) < 1 or victim.ledger.free() == 0:
                await trio.sleep(0.1)
        before = await ask(victim)
        attacker = Signer(sha256(b"attacker"))
        async with net.open_transport(attacker) as t:
            await t.connect(victim.transport.listen_addrs()[0])
            # every stream protocol, every kind of bad frame
            for proto in (INFER_PROTOCOL, SYNC_PROTOCOL):
                for junk in GARBAGE:
                    s = await t.open_stream(victim.peer_id, proto)
                    try:
                        if junk:
                            await s.send_all(junk)
                        await s.send_eof()
                        framed = FramedStream(s)
                        try:
                            while await framed.recv_or_eof(timeout=30) is not None:
                                pass
                        except (RemoteProtocolError, ConnectionBroken, PeerTimeout):
                            pass
                    except ConnectionBroken:
                        pass
                    finally:
                        await s.aclose()
            # gossip: garbage, another network's status, a forged status, a status signed by someone else
            real = victim.gossip.make_status()
            forged = dataclasses.replace(real, stake=10**15)
            other_net = dataclasses.replace(real, network_id="othernet")
            mine = Status("devnet", attacker.peer_id, 1, 0, (), (), True, 0, 0, 10**15, b"", 2000, False, b"", b"").signed(attacker)
            for topic in (status_topic("devnet"), blocks_topic("devnet", CFG.ledger_params.network_params().digest())):
                for data in (b"", b"\xff" * 100, forged.encode(), other_net.encode(), real.encode(), b"\x00" * 70_000):
                    await t.publish(topic, data)
            await t.publish(status_topic("devnet"), mine.encode())  # a valid status of the attacker itself
            await trio.sleep(3)

        # forged/foreign statuses changed nothing; the victim's ledger is intact; it still serves
        entry = cluster[1].peers.get(victim.peer_id)
        assert entry is not None and entry.status.stake < 10**15
        assert fingerprint(victim.ledger.store.state) == fingerprint(cluster[1].ledger.store.state)
        assert await ask(victim) == before
        assert len(victim.transport.connected_peers()) >= 1
