"""The pure peer table."""

from __future__ import annotations

import dataclasses

from p2pserve.crypto import Signer
from p2pserve.membership.table import PeerTable, UpdateResult
from p2pserve.wire.messages import ModelStatus, Status

A, B, ME = (Signer(bytes([i]) * 32) for i in (1, 2, 3))


def status(signer: Signer, seq: int, *, network: str = "devnet", models: tuple[str, ...] = ("m",), accepting: bool = True) -> Status:
    ms = tuple(ModelStatus(n, 2048, 1000, 0, 0, None, True) for n in models)
    return Status(network, signer.peer_id, seq, 0, (), ms, accepting, 0, 0, 5, b"", 2000, b"").signed(signer)


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
