"""Wire messages of ledger sync, ``/p2pserve/sync/1`` (tags 40-43); the service is
:mod:`p2pserve.ledger.sync`.

One exchange per stream: the requester sends :class:`SyncHeads`; the responder answers
with any number of :class:`SyncBatch` es and ends with :class:`SyncDone`.
"""

from __future__ import annotations

from p2pserve.errors import MalformedMessage
from p2pserve.wire.codec import Message, message
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = [
    "MAX_GENESIS",
    "MAX_PROOFS",
    "MAX_WANTS",
    "SYNC_PROTOCOL",
    "SyncBatch",
    "SyncDone",
    "SyncHead",
    "SyncHeads",
    "SyncMismatch",
    "blocks_topic",
]

SYNC_PROTOCOL = "/p2pserve/sync/1"

MAX_WANTS = 64
"""Most blocks a sync request may ask for by hash."""

MAX_PROOFS = 64
"""Most equivocation proofs one SyncDone carries (and a requester reads)."""

MAX_GENESIS = 512
"""Longest encoded network parameters a sync message may carry."""


def blocks_topic(network_id: str, genesis: bytes) -> str:
    """The gossip topic of the ledger blocks of ``network_id`` with genesis digest ``genesis``
    (``NetworkParams.digest()``): nodes whose network parameters differ never exchange blocks."""
    return f"/p2pserve/{network_id}/{genesis.hex()}/blocks/1"


@message(40)
class SyncHead(Message):
    """The requester holds ``account``'s chain up to ``height`` (inclusive), ending in the
    block ``hash``: a responder holding another block there sends its own recent blocks of
    that chain, so a fork at equal heights is seen (an equivocation, or a stale copy of
    the requester's own chain)."""

    account: str
    height: int
    hash: bytes


@message(41)
class SyncHeads(Message):
    """Sync request: the requester's heads (at most MAX_ITEMS accounts), and the hashes of
    blocks it waits for (payments its pending claims cite): those may sit at heights it
    already fills with another block (an equivocator's other branch), which heads alone
    would never fetch."""

    network_id: str
    heads: tuple[SyncHead, ...]
    wants: tuple[bytes, ...]
    genesis: bytes
    """The requester's network parameters (``NetworkParams`` encoded): a responder holding
    others answers :class:`SyncMismatch` and both sides say what differs."""

    def _check(self) -> None:
        if len(self.wants) > MAX_WANTS or any(len(w) != 32 for w in self.wants):
            raise MalformedMessage(f"at most {MAX_WANTS} wanted block hashes of 32 bytes")
        if len(self.genesis) > MAX_GENESIS:
            raise MalformedMessage(f"genesis longer than {MAX_GENESIS} bytes")


@message(42)
class SyncBatch(Message):
    """Blocks the requester lacks, canonical encodings, in an order the rules accept."""

    blocks: tuple[bytes, ...]

    def _check(self) -> None:
        if len(self.blocks) > DEFAULT_LIMITS.max_blocks_per_batch:
            raise MalformedMessage(f"more than {DEFAULT_LIMITS.max_blocks_per_batch} blocks in a batch")


@message(43)
class SyncDone(Message):
    """End of a sync answer; ``more`` says the responder stopped at its session limit."""

    more: bool
    proofs: tuple[bytes, ...]
    """Equivocation proofs the responder keeps (so frozen accounts propagate too)."""

    def _check(self) -> None:
        if len(self.proofs) > MAX_PROOFS:
            raise MalformedMessage(f"more than {MAX_PROOFS} equivocation proofs")


@message(44)
class SyncMismatch(Message):
    """Answer to a :class:`SyncHeads` of another network or genesis: the responder's own
    network parameters (``NetworkParams`` encoded), so the requester can say what differs."""

    genesis: bytes

    def _check(self) -> None:
        if len(self.genesis) > MAX_GENESIS:
            raise MalformedMessage(f"genesis longer than {MAX_GENESIS} bytes")
