"""Wire messages of membership gossip, ``/p2pserve/<network_id>/status/1`` (tags 1-9).

Every node publishes its signed :class:`Status` every ``status_interval`` seconds; the
service is :mod:`p2pserve.membership.gossip`.
"""

from __future__ import annotations

from p2pserve.errors import MalformedMessage
from p2pserve.wire.codec import Message, SignedMessage, check_length, check_non_negative, message
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = ["MAX_STATUS_INTERVAL_MS", "ModelStatus", "Status"]

MAX_STATUS_INTERVAL_MS = 120_000
"""A peer may not declare a slower gossip than this (it would stay listed long after leaving)."""


@message(2)
class ModelStatus(Message):
    """One model a node serves, with its current load."""

    name: str
    context_length: int
    price_per_1k: int
    """Price in micro-credits per 1000 output tokens."""
    running: int
    queued: int
    token_usage: float | None
    """KV-cache usage 0..1, or None when the backend does not say (unknown is never idle)."""
    accepting: bool

    def _check(self) -> None:
        check_length("model name", self.name)
        for n in ("context_length", "price_per_1k", "running", "queued"):
            check_non_negative(n, getattr(self, n))
        if self.token_usage is not None and not 0.0 <= self.token_usage <= 1.5:
            raise MalformedMessage("token_usage out of range")


@message(1)
class Status(SignedMessage):
    """A node's signed self-description, gossiped every ``status_interval`` seconds."""

    network_id: str
    peer_id: str
    seq: int
    """Strictly increasing per node run-and-restart (starts at the wall clock in ms)."""
    timestamp_ms: int
    addrs: tuple[str, ...]
    models: tuple[ModelStatus, ...]
    accepting: bool
    running: int
    queued: int
    stake: int
    """Staked micro-credits the node claims (routing checks it against the ledger when known)."""
    ledger_head: bytes
    interval_ms: int
    """How often this node gossips its status now; receivers expire it after a few of these."""
    judge: bool
    """The node judges duels (``/p2pserve/judge/1``)."""
    genesis: bytes
    """The first 16 bytes of the SHA-256 of the node's network parameters (its genesis):
    nodes of one network hold the same; a status with another is not accepted."""
    signature: bytes

    SIGNER = "peer_id"

    def _check(self) -> None:
        check_length("network_id", self.network_id, 64)
        lim = DEFAULT_LIMITS.max_peers_per_status
        if len(self.addrs) > lim or len(self.models) > lim:
            raise MalformedMessage(f"status lists more than {lim} addresses or models")
        for a in self.addrs:
            check_length("address", a)
        for n in ("seq", "timestamp_ms", "running", "queued", "stake"):
            check_non_negative(n, getattr(self, n))
        if not 0 < self.interval_ms <= MAX_STATUS_INTERVAL_MS:
            raise MalformedMessage(f"interval_ms must be within (0, {MAX_STATUS_INTERVAL_MS}]")
        if len(self.ledger_head) > 64:
            raise MalformedMessage("ledger_head longer than 64 bytes")
        if len(self.genesis) > 32:
            raise MalformedMessage("genesis longer than 32 bytes")
