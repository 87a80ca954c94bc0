"""The unpaid-receipts log: receipts a node owes for, kept until a ``pay`` block settles them.

Owns one append-only file next to the ledger (``<data-dir>/unpaid.log``): each queued
receipt is one uvarint-length-prefixed frame of its canonical encoding, written with one
``write()`` when it is queued (no fsync: the point of queueing is to avoid a durable commit
per request). After each flush the file is rewritten to hold exactly what is still queued.

Guarantees: a receipt written here survives the process being killed (SIGKILL, a crash):
the bytes are in the kernel's page cache. It may be lost on power loss or an OS crash before
the kernel writes it back (seconds); that loses a payment owed, never ledger consistency
(a receipt is an IOU, not a block, so forgetting one cannot make the node equivocate).
Loading tolerates a torn last frame and skips frames that do not decode; the caller drops
receipts the ledger already shows as paid (a crash between the pay block's commit and the
rewrite leaves them here).

Not thread-safe; one log per node, used from one trio task at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from p2pserve.errors import MalformedMessage
from p2pserve.framelog import FrameLog
from p2pserve.wire.codec import decode
from p2pserve.wire.infer import Receipt

__all__ = ["UNPAID_NAME", "UnpaidLog"]

UNPAID_NAME = "unpaid.log"
_MAX_RECEIPT = 64 * 1024


class UnpaidLog:
    """Receipts queued for payment, on disk. Open with :meth:`open`, then :meth:`load`."""

    def __init__(self, path: Path | str) -> None:
        self.log = FrameLog(path, _MAX_RECEIPT)
        self.path = self.log.path

    def open(self) -> list[Receipt]:
        """Open (creating) the file; the receipts it holds, in the order they were queued.

        Raises StoreError if the file cannot be opened or read.
        """
        receipts = self.load()
        self.log.open()
        return receipts

    def load(self) -> list[Receipt]:
        """The receipts in the file (none if it does not exist)."""
        out: list[Receipt] = []
        for frame in self.log.read():
            try:
                out.append(decode(frame, expect=Receipt))
            except MalformedMessage:
                continue
        return out

    def append(self, receipt: Receipt) -> None:
        """Add one receipt (one ``write()``; not fsynced). Raises StoreError."""
        self.log.append(receipt.encode())

    def rewrite(self, receipts: Iterable[Receipt]) -> None:
        """Make the file hold exactly ``receipts`` (after a flush). Raises StoreError."""
        if self.log.is_open:
            self.log.rewrite(r.encode() for r in receipts)

    def close(self) -> None:
        """Close the file (idempotent)."""
        self.log.close()
