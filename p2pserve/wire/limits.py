"""Named limits on everything a peer can make us buffer or count (checked in the pure layer)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Wire limits. Every count or size a peer controls is bounded by one of these."""

    max_frame: int = 4 * 1024 * 1024
    """Largest frame accepted on a stream (bytes after the length prefix)."""
    max_prompt: int = 1024 * 1024
    """Largest request body (the OpenAI JSON) carried in an infer request."""
    max_peers_per_status: int = 64
    """Most addresses or models one status may list."""
    max_pubsub_message: int = 64 * 1024
    """Largest gossip message (status, block) accepted from the pubsub layer."""
    max_blocks_per_batch: int = 512
    """Most ledger blocks in one sync batch."""
    max_text_chunk: int = 64 * 1024
    """Largest text in one streamed token chunk."""


DEFAULT_LIMITS = Limits()
