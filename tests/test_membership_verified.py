"""Decode and verify each gossiped status once: the memo of verified statuses, and the gossip
service's validator and receive loop sharing it (a forged or garbled status is still neither
delivered nor relayed)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable

import trio

from p2pserve.crypto import Signer
from p2pserve.membership.gossip import GossipService, status_topic
from p2pserve.membership.table import PeerTable
from p2pserve.membership.verified import VerifiedStatuses
from p2pserve.transport import PubsubMessage
from p2pserve.wire.gossip import Status
from tests.conftest import signer_for
from transports.memory import MemoryNetwork, MemoryTransport

NET = "devnet"
TOPIC = status_topic(NET)


def status(signer: Signer, seq: int = 1, *, network: str = NET, stake: int = 5) -> Status:
    return Status(network, signer.peer_id, seq, 0, (), (), True, 0, 0, stake, b"", 2000, False, b"", b"").signed(signer)


def forged(signer: Signer) -> bytes:
    """A well-formed status whose signature does not match its fields."""
    return dataclasses.replace(status(signer), stake=10**9).encode()


# -- the memo ----------------------------------------------------------------------------------


def test_a_remembered_status_is_the_same_object_and_is_not_checked_again() -> None:
    memo = VerifiedStatuses()
    data = status(signer_for("a")).encode()
    first = memo.status_of(data)
    assert first is not None and first.peer_id == signer_for("a").peer_id
    assert memo.status_of(bytes(bytearray(data))) is first  # equal bytes, another object: a hit
    assert (memo.checked, memo.hits, len(memo)) == (1, 1, 1)


def test_garbled_forged_and_flipped_bytes_are_rejected_and_not_remembered() -> None:
    memo = VerifiedStatuses()
    a = signer_for("a")
    good = status(a).encode()
    assert memo.status_of(good) is not None
    flipped = bytearray(good)
    flipped[-1] ^= 1  # the last byte of the signature
    for bad in (b"\x93garbage", b"", forged(a), bytes(flipped), good[:-1]):
        assert memo.status_of(bad) is None
        assert memo.status_of(bad) is None  # checked again: failures are not remembered
    assert len(memo) == 1 and memo.checked == 1 + 2 * 5


def test_want_is_applied_on_a_hit_and_before_verifying_on_a_miss() -> None:
    memo = VerifiedStatuses()
    a = signer_for("a")
    data = status(a).encode()
    assert memo.status_of(data, lambda s: s.peer_id == a.peer_id) is not None
    assert memo.status_of(data, lambda s: s.peer_id == "someone else") is None  # a hit, still refused
    other = status(a, network="other").encode()
    assert memo.status_of(other, lambda s: s.network_id == NET) is None
    assert len(memo) == 1  # the refused miss was never verified nor remembered


def test_capacity_forgets_the_oldest_first() -> None:
    memo = VerifiedStatuses(capacity=2)
    data = [status(signer_for("a"), seq).encode() for seq in (1, 2, 3)]
    objs = [memo.status_of(d) for d in data]
    assert len(memo) == 2 and memo.checked == 3
    assert memo.status_of(data[2]) is objs[2] and memo.status_of(data[1]) is objs[1]
    again = memo.status_of(data[0])  # forgotten: checked afresh, an equal new object
    assert again == objs[0] and again is not objs[0] and memo.checked == 4


def test_the_memo_module_is_pure() -> None:
    code = "import sys, p2pserve.membership.verified; print(sorted({'trio', 'transports'} & {m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the gossip service on the memory transport --------------------------------------------------


class RecordingMemo(VerifiedStatuses):
    """Remembers what every lookup returned, to compare with what reached the table."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[bytes, Status | None]] = []

    def status_of(self, data: bytes, want: Callable[[Status], bool] | None = None) -> Status | None:
        out = super().status_of(data, want)
        self.answers.append((data, out))
        return out


async def test_forged_and_replayed_statuses_are_neither_delivered_nor_relayed(autojump_clock: trio.abc.Clock) -> None:
    """a and m are raw transports; b and c run gossip; the line is a-b-c, m-b. Only b can relay
    to c, and c's first validator records everything that reaches it."""
    network = MemoryNetwork(seed=1, default_latency=0.01)
    a_key, m_key = signer_for("a"), signer_for("m")
    memos = {"b": RecordingMemo(), "c": RecordingMemo()}
    arrived_at_c: list[PubsubMessage] = []
    async with trio.open_nursery() as nursery:

        async def node(name: str, *, task_status: trio.TaskStatus[tuple[MemoryTransport, GossipService]]) -> None:
            signer = signer_for(name)
            async with network.open_transport(signer) as t:
                if name == "c":
                    await t.subscribe(TOPIC, lambda msg: arrived_at_c.append(msg) or True)
                g = GossipService(t, signer, PeerTable(signer.peer_id, NET, 6.0), target_connections=1, verified=memos[name])
                await nursery.start(g.run)
                task_status.started((t, g))
                await trio.sleep_forever()

        async def raw(signer: Signer, *, task_status: trio.TaskStatus[MemoryTransport]) -> None:
            async with network.open_transport(signer) as t:
                task_status.started(t)
                await trio.sleep_forever()

        (b, gb), (c, gc) = await nursery.start(node, "b"), await nursery.start(node, "c")
        a, m = await nursery.start(raw, a_key), await nursery.start(raw, m_key)
        await b.connect(c.listen_addrs()[0])
        await a.connect(b.listen_addrs()[0])
        await m.connect(b.listen_addrs()[0])
        legit = status(a_key).encode()
        bad = [b"\x93garbage", forged(a_key), status(m_key, network="other").encode(), status(a_key, 2).encode()]
        await a.publish(TOPIC, bad[0])
        await a.publish(TOPIC, bad[1])
        await m.publish(TOPIC, bad[2])  # another network's status
        await m.publish(TOPIC, bad[3])  # a's valid status, published by m: not its origin
        await a.publish(TOPIC, legit)
        await trio.sleep(0.5)
        await m.publish(TOPIC, legit)  # a's remembered bytes replayed by m: refused on the hit
        await trio.sleep(0.5)

        assert not any(msg.data in bad for msg in arrived_at_c)
        assert [msg.from_peer for msg in arrived_at_c if msg.data == legit] == [a_key.peer_id]
        for g in (gb, gc):
            entry = g.peers.get(a_key.peer_id)
            assert entry is not None and entry.status.seq == 1 and g.rejected == 0
            assert m_key.peer_id not in g.peers
        for name, g in (("b", gb), ("c", gc)):
            # decoded and verified once; the receive loop got the validator's very object
            memo = memos[name]
            answers = [out for data, out in memo.answers if data == legit and out is not None]
            entry = g.peers.get(a_key.peer_id)
            assert entry is not None and all(out is entry.status for out in answers) and len(answers) >= 2
        nursery.cancel_scope.cancel()


def test_receive_loop_checks_a_message_the_memo_forgot() -> None:
    """With a one-entry memo, other traffic evicts a status between validator and receive
    loop: the loop decodes and verifies it again rather than trusting it blindly."""
    memo = VerifiedStatuses(capacity=1)
    a = signer_for("a")
    g = GossipService(None, a, PeerTable(a.peer_id, NET, 6.0), verified=memo)  # type: ignore[arg-type]  # no I/O here
    data = status(a).encode()
    msg = PubsubMessage(TOPIC, a.peer_id, data)
    assert memo.status_of(data) is not None
    memo.status_of(status(signer_for("x")).encode())  # evicts a's
    got = g.accepted(msg)
    assert got is not None and got.peer_id == a.peer_id and memo.checked == 3
    assert g.accepted(PubsubMessage(TOPIC, a.peer_id, forged(a))) is None
    assert g.accepted(PubsubMessage(TOPIC, signer_for("x").peer_id, data)) is None
