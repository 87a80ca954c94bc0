"""Named limits on everything a peer can make us buffer or count (checked in the pure layer)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "READ_SLACK", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Wire limits and stream caps. Every count or size a peer controls is bounded by one of these."""

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
    max_streams_per_peer: int = 1024
    """Inbound streams one peer may hold open at once; a peer over it is cut off (its streams
    closed, new ones refused for 60 s, logged once as an offence)."""
    max_streams: int = 8192
    """Inbound streams all peers together may hold open at once; a stream past it is refused
    (nobody is cut off). At least ``max_streams_per_peer``."""
    max_buffered_per_peer: int = 64 << 20
    """Bytes of incomplete (or unread) frames one peer's streams may hold at once; a peer over
    it is cut off. At least ``max_frame`` + 65546 (one largest frame, its length prefix and
    the rest of one read: ``READ_SLACK``)."""
    max_buffered: int = 256 << 20
    """Bytes of incomplete (or unread) frames all streams together may hold; past it the peer
    holding the most is cut off. At least ``max_buffered_per_peer``."""


READ_SLACK = 64 * 1024 + 10
"""Bytes a stream's frame reader may hold beyond one whole frame: the rest of one read
(``RECEIVE_CHUNK``, 64 KiB, in :mod:`p2pserve.net.framed`) and a length prefix (up to 10 bytes)."""


DEFAULT_LIMITS = Limits()
