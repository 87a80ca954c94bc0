"""Ed25519 signing, verification and hashing; the only module that touches pynacl.

Peer IDs are libp2p peer IDs for Ed25519 keys: base58btc of the identity multihash of the
protobuf-encoded public key (``12D3KooW...``). They are computed here without libp2p, so
pure code can check that a signature comes from the peer ID it claims.
"""

from __future__ import annotations

import hashlib

import nacl.exceptions
import nacl.signing

from p2pserve.errors import BadSignature, MalformedMessage

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "Signer",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "sha256",
    "verify",
    "verify_by_peer_id",
]

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes} as libp2p encodes it
_PB_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# multihash: identity (0x00), length 36
_MH_IDENTITY_PREFIX = bytes([0x00, 0x24])
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise MalformedMessage(f"invalid base58 character {c!r} in peer id") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + body


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID (``12D3KooW...``) of an Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError("Ed25519 public keys are 32 bytes")
    return _b58encode(_MH_IDENTITY_PREFIX + _PB_ED25519_PREFIX + public_key)


_peer_key_cache: dict[str, bytes] = {}


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inside a peer ID; raises MalformedMessage for anything else."""
    cached = _peer_key_cache.get(peer_id)
    if cached is not None:
        return cached
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 60:
        raise MalformedMessage(f"not an Ed25519 peer id: {peer_id!r:.80}")
    raw = _b58decode(peer_id)
    prefix = _MH_IDENTITY_PREFIX + _PB_ED25519_PREFIX
    if len(raw) != len(prefix) + PUBLIC_KEY_SIZE or not raw.startswith(prefix):
        raise MalformedMessage(f"not an Ed25519 peer id: {peer_id!r:.80}")
    key = raw[len(prefix) :]
    if len(_peer_key_cache) > 100_000:
        _peer_key_cache.clear()
    _peer_key_cache[peer_id] = key
    return key


def verify(public_key: bytes, data: bytes, signature: bytes) -> None:
    """Raise BadSignature unless ``signature`` is a valid Ed25519 signature of ``data``."""
    if len(signature) != SIGNATURE_SIZE:
        raise BadSignature(f"signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise BadSignature("signature does not verify") from exc


def verify_by_peer_id(peer_id: str, data: bytes, signature: bytes) -> None:
    """Verify a signature against the key embedded in ``peer_id``.

    Signatures that verified are remembered (:data:`_VERIFIED`, bounded): a node sees the
    same signed block again in sync answers and replays, and the simulator runs hundreds
    of nodes in one process that all receive the same blocks, so each is checked once per
    process. The memory is keyed by the signer, the SHA-256 of the data and the whole
    signature, so only an identical (peer, data, signature) triple is ever taken from it;
    failures are never remembered."""
    key = (peer_id, sha256(data), signature)
    if key in _VERIFIED:
        return
    verify(public_key_from_peer_id(peer_id), data, signature)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED.add(key)


_VERIFIED: set[tuple[str, bytes, bytes]] = set()
_VERIFIED_MAX = 200_000


class Signer:
    """An Ed25519 private key. ``seed`` is the 32 bytes persisted in the key file."""

    __slots__ = ("_key", "peer_id", "public_key", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {len(seed)}")
        self._key = nacl.signing.SigningKey(seed)
        self.seed = bytes(seed)
        self.public_key = bytes(self._key.verify_key)
        self.peer_id = peer_id_from_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``. It is remembered as verified (valid by
        construction): our own receipts come back inside the requester's pay blocks, and our
        own blocks are checked when appended, each a ~60 µs verification otherwise."""
        signature: bytes = self._key.sign(data).signature
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED.add((self.peer_id, sha256(data), signature))
        return signature

    def __repr__(self) -> str:
        return f"Signer(peer_id={self.peer_id!r})"
