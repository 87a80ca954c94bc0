"""Identity: key files with mode 0600, peer IDs that libp2p agrees with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pserve.crypto import Signer, peer_id_from_public_key, public_key_from_peer_id, verify_by_peer_id
from p2pserve.errors import BadSignature, IdentityError, MalformedMessage
from p2pserve.identity import default_data_dir, load_identity, load_or_create_identity, new_identity


def test_new_key_is_private_and_reloads(tmp_path: Path) -> None:
    s = load_or_create_identity(tmp_path / "d")
    path = tmp_path / "d" / "identity.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == s.seed and len(s.seed) == 32
    assert load_or_create_identity(tmp_path / "d").peer_id == s.peer_id


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    s = new_identity(tmp_path / "identity.key")
    os.chmod(tmp_path / "identity.key", 0o640)
    with pytest.raises(IdentityError, match="accessible by other users"):
        load_identity(tmp_path / "identity.key")
    del s


def test_bad_key_files(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no key file"):
        load_identity(tmp_path / "missing.key")
    p = tmp_path / "short.key"
    p.write_bytes(b"x" * 31)
    p.chmod(0o600)
    with pytest.raises(IdentityError, match="32-byte seed"):
        load_identity(p)
    new_identity(tmp_path / "k")
    with pytest.raises(IdentityError, match="already exists"):
        new_identity(tmp_path / "k")


def test_default_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("P2PSERVE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("P2PSERVE_HOME")
    assert default_data_dir() == Path.home() / ".p2pserve"


def test_peer_id_matches_libp2p() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    seed = bytes(range(32))
    s = Signer(seed)
    assert ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58() == s.peer_id
    assert s.peer_id.startswith("12D3KooW")
    assert public_key_from_peer_id(s.peer_id) == s.public_key
    assert peer_id_from_public_key(s.public_key) == s.peer_id


def test_verify_by_peer_id() -> None:
    s, other = Signer(bytes(32)), Signer(bytes([1]) * 32)
    sig = s.sign(b"hello")
    verify_by_peer_id(s.peer_id, b"hello", sig)
    with pytest.raises(BadSignature):
        verify_by_peer_id(other.peer_id, b"hello", sig)
    with pytest.raises(BadSignature):
        verify_by_peer_id(s.peer_id, b"hello", sig[:10])
    for bad in ("", "QmNotAnEd25519Key", "0OIl" * 12):
        with pytest.raises(MalformedMessage):
            public_key_from_peer_id(bad)
