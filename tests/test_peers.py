"""The pure peer table."""

from __future__ import annotations

import dataclasses
import random

from p2pserve.crypto import Signer
from p2pserve.membership.table import PeerTable, UpdateResult
from p2pserve.wire.gossip import ModelStatus, Status

A, B, ME = (Signer(bytes([i]) * 32) for i in (1, 2, 3))


def status(signer: Signer, seq: int, *, network: str = "devnet", models: tuple[str, ...] = ("m",), accepting: bool = True) -> Status:
    ms = tuple(ModelStatus(n, 2048, 1000, 0, 0, None, True) for n in models)
    return Status(network, signer.peer_id, seq, 0, (), ms, accepting, 0, 0, 5, b"", 2000, False, b"", b"").signed(signer)


def test_newest_sequence_wins() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6)
    assert t.update(status(A, 5), 0.0) is UpdateResult.NEW
    assert t.update(status(A, 5), 1.0) is UpdateResult.STALE
    assert t.update(status(A, 4), 1.0) is UpdateResult.STALE
    assert t.get(A.peer_id).last_seen == 0.0  # type: ignore[union-attr]
    assert t.update(status(A, 6), 2.0) is UpdateResult.UPDATED
    assert t.get(A.peer_id).status.seq == 6  # type: ignore[union-attr]


def test_bad_signature_wrong_network_and_self_are_ignored() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6)
    forged = dataclasses.replace(status(A, 1), stake=10**9)
    assert t.update(forged, 0) is UpdateResult.BAD_SIGNATURE
    assert t.update(status(A, 1, network="other"), 0) is UpdateResult.WRONG_NETWORK
    assert t.update(status(ME, 1), 0) is UpdateResult.SELF
    assert len(t) == 0


def test_expiry_after_ttl() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6)
    t.update(status(A, 1), 0.0)
    t.update(status(B, 1), 3.0)
    assert t.expire(6.0) == []
    assert t.expire(6.5) == [A.peer_id]
    assert A.peer_id not in t and B.peer_id in t


def test_candidates_filter() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6)
    t.update(status(A, 1, models=("m", "n")), 0)
    t.update(status(B, 1, models=("m",), accepting=False), 0)
    assert [e.peer_id for e in t.candidates("m")] == [A.peer_id]
    assert t.candidates("n", exclude=[A.peer_id]) == []
    t.freeze(A.peer_id)
    assert t.candidates("m") == [] and t.is_frozen(A.peer_id)
    assert t.models() == {"m", "n"}


def interval_status(signer: Signer, seq: int, interval_ms: int) -> Status:
    return dataclasses.replace(status(signer, seq), interval_ms=interval_ms, signature=b"").signed(signer)


def test_expiry_is_strictly_after_the_deadline_and_updates_move_it() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6)
    t.update(status(A, 1), 0.0)
    t.update(status(A, 2), 4.0)  # deadline moves from 6 to 10
    assert t.expire(6.5) == [] and A.peer_id in t
    assert t.expire(10.0) == []  # silent for exactly ttl: not yet
    assert A.peer_id in t
    assert t.expire(10.001) == [A.peer_id]
    assert t.expire(100.0) == [] and len(t) == 0


def test_a_peer_whose_interval_grows_lives_for_its_new_ttl() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6, ttl_intervals=3)
    t.update(interval_status(A, 1, 2000), 0.0)  # ttl max(6, 3 * 2 s) = 6: deadline 6
    t.update(interval_status(A, 2, 20_000), 1.0)  # now 3 * 20 s = 60: deadline 61
    assert t.ttl_of(t.get(A.peer_id)) == 60  # type: ignore[arg-type]
    assert t.expire(7.0) == [] and t.expire(61.0) == []
    assert t.expire(61.5) == [A.peer_id]


def test_a_peer_whose_interval_shrinks_expires_on_its_new_ttl() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6, ttl_intervals=3)
    t.update(interval_status(A, 1, 20_000), 0.0)  # deadline 60
    t.update(interval_status(A, 2, 1000), 1.0)  # ttl back to the floor of 6 s: deadline 7
    assert t.expire(7.5) == [A.peer_id]


def test_removed_and_rejoined_peer_keeps_its_new_deadline() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6)
    t.update(status(A, 1), 0.0)
    t.remove(A.peer_id)
    assert t.expire(10.0) == []
    t.update(status(A, 2), 10.0)  # the deadline at 6 left in the heap is stale
    assert t.expire(15.0) == [] and A.peer_id in t
    assert t.expire(16.5) == [A.peer_id]
    t.update(status(A, 3), 20.0)  # expired, then heard again
    t.update(status(B, 1), 19.0)
    assert t.expire(26.5) == [B.peer_id, A.peer_id]  # in deadline order


def test_changing_the_ttl_moves_every_deadline() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6)
    t.update(status(A, 1), 0.0)
    t.ttl = 20
    assert t.expire(10.0) == [] and A.peer_id in t
    t.ttl_intervals = 20  # 20 of A's 2 s intervals: 40 s
    assert t.expire(30.0) == [] and t.expire(40.5) == [A.peer_id]
    t.update(status(B, 1), 50.0)
    t.ttl, t.ttl_intervals = 1, 1
    assert t.expire(52.5) == [B.peer_id]


def test_fast_gossip_keeps_the_deadline_heap_bounded() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=600)
    a = status(A, 1)
    for seq in range(1, 2000):  # a peer gossiping far faster than its ttl
        t.update(dataclasses.replace(a, seq=seq), seq * 0.01, verified=True)
    assert len(t._deadlines) <= 4 * len(t) + 65
    assert t.expire(600.0 + 19.0) == [] and t.expire(600.0 + 20.0) == [A.peer_id]


def test_expiry_matches_a_full_scan() -> None:
    """Random updates, removals and expiry calls: the heap drops exactly what scanning every
    entry with the ttl rule would, when it would."""
    rng = random.Random(5)
    signers = [Signer(bytes([10 + i]) * 32) for i in range(8)]
    statuses = {s.peer_id: [interval_status(s, 1, ms) for ms in (500, 2000, 7000, 30_000)] for s in signers}
    t = PeerTable(ME.peer_id, "devnet", ttl=6, ttl_intervals=3)
    seq = 1
    now = 0.0
    for _ in range(3000):
        now += rng.choice((0.0, 0.25, 1.0, 3.3))
        pid = rng.choice(signers).peer_id
        op = rng.random()
        if op < 0.6:
            seq += 1
            t.update(dataclasses.replace(rng.choice(statuses[pid]), seq=seq), now, verified=True)
        elif op < 0.65:
            t.remove(pid)
        else:
            want = sorted(e.peer_id for e in t.entries() if now - e.last_seen > t.ttl_of(e))
            assert sorted(t.expire(now)) == want
            assert all(now - e.last_seen <= t.ttl_of(e) for e in t.entries())


def test_next_deadline_is_the_earliest_live_one() -> None:
    t = PeerTable(ME.peer_id, "devnet", ttl=6, ttl_intervals=3)
    assert t.next_deadline() is None
    t.update(interval_status(A, 1, 2000), 0.0)  # deadline 6
    t.update(interval_status(B, 1, 4000), 1.0)  # deadline 13
    assert t.next_deadline() == 6.0
    t.update(interval_status(A, 2, 2000), 9.0)  # A's 6 is superseded by 15
    assert t.next_deadline() == 13.0
    t.remove(B.peer_id)
    assert t.next_deadline() == 15.0
    assert t.expire(15.0) == [] and t.expire(15.5) == [A.peer_id] and t.next_deadline() is None
