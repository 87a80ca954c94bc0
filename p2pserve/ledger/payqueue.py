"""The requester side of payment before it reaches the ledger: credit held for requests
being offered, and receipts queued for the next pay block.

Owns the :class:`Hold` s (a request's worst-case price, set aside before it is offered) and
the queue of verified receipts per executor (in arrival order), with ``reserved`` (their
price sum) and ``held`` (the open holds' sum); the unpaid log mirrors the queue on disk.
Invariants: a receipt is queued at most once and only if the free credit less what is
queued and held covers it (or its hold did); ``reserved`` and ``held`` always equal the sums
they name. No trio, no blocks: the ledger service writes the pay blocks
(:meth:`PayQueue.groups` says which).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from p2pserve.errors import P2PServeError
from p2pserve.ledger.blocks import MAX_BODY, MAX_RECEIPTS_PER_PAY
from p2pserve.ledger.unpaid import UnpaidLog
from p2pserve.wire.infer import Receipt

__all__ = ["Hold", "PayQueue"]

log = logging.getLogger("p2pserve.ledger.service")
_RECEIPT_OVERHEAD = 8
"""Bytes a body spends per receipt beyond the receipt's own encoding (array headers)."""


class Hold:
    """Credit set aside for one offloaded request: its worst-case price. Pay the receipt
    through it (:meth:`pay`), or :meth:`release` it; both are idempotent, and releasing
    after paying changes nothing."""

    __slots__ = ("_queue", "amount", "open")

    def __init__(self, queue: PayQueue, amount: int) -> None:
        self._queue = queue
        self.amount = amount
        self.open = True

    def pay(self, receipt: Receipt) -> bool:
        """Queue ``receipt`` if its price is within this hold; True if queued. A receipt
        priced above the hold is refused (logged). The hold is released either way."""
        if not self.open:
            return False
        self.release()
        if receipt.price > self.amount:
            self._queue.unpaid += 1
            log.warning("refusing receipt %s of %s: price %d above the %d held for it",
                        receipt.request_id.hex(), receipt.executor, receipt.price, self.amount)
            return False
        return self._queue.queue_receipt(receipt)

    def release(self) -> None:
        if self.open:
            self.open = False
            self._queue.held -= self.amount


class PayQueue:
    """Holds and queued receipts of one payer (see the module docstring).

    ``available()`` is the payer's free credit less what is queued and held;
    ``is_paid(executor, request_id)`` asks the ledger; ``on_full`` is called when one
    executor has ``max_receipts_per_pay`` receipts queued, ``on_queued`` on every receipt
    queued (the pay writer sleeps while the queue is empty)."""

    def __init__(
        self,
        me: str,
        *,
        available: Callable[[], int],
        is_paid: Callable[[str, bytes], bool],
        max_receipts_per_pay: int = MAX_RECEIPTS_PER_PAY,
        on_full: Callable[[], None] = lambda: None,
        on_queued: Callable[[], None] = lambda: None,
        unpaid_log: UnpaidLog | None = None,
    ) -> None:
        self.me = me
        self.available = available
        self.is_paid = is_paid
        self.max_receipts_per_pay = max_receipts_per_pay
        self.on_full = on_full
        self.on_queued = on_queued
        self.unpaid_log = unpaid_log
        self._queue: dict[str, list[Receipt]] = {}
        self._keys: set[tuple[str, bytes]] = set()
        self.reserved = 0
        """Micro-credits of queued receipts."""
        self.held = 0
        """Micro-credits held for requests offered and not answered yet."""
        self.unpaid = 0
        """Receipts refused or dropped (over their hold, unaffordable, refused by the ledger)."""

    def hold(self, amount: int) -> Hold | None:
        """Set ``amount`` aside for one request, or None if it is not free."""
        if amount < 0 or self.available() < amount:
            return None
        self.held += amount
        return Hold(self, amount)

    def queue_receipt(self, receipt: Receipt) -> bool:
        """Queue a verified receipt (and log it); True if queued. Receipts of price 0, not
        ours to pay, already queued or paid are ignored; an unaffordable one is refused."""
        if receipt.price <= 0 or receipt.requester != self.me or receipt.executor == self.me:
            return False
        if (receipt.executor, receipt.request_id) in self._keys or self.is_paid(receipt.executor, receipt.request_id):
            return False
        if self.available() < receipt.price:
            self.unpaid += 1
            log.warning("refusing receipt %s of %s: price %d is more than our free credit",
                        receipt.request_id.hex(), receipt.executor, receipt.price)
            return False
        self.enqueue(receipt)
        if self.unpaid_log is not None:
            try:
                self.unpaid_log.append(receipt)
            except P2PServeError as exc:
                log.warning("could not log receipt %s (paid from memory only): %s", receipt.request_id.hex(), exc)
        return True

    def enqueue(self, r: Receipt) -> bool:
        """Queue ``r`` unless queued or paid already (no credit check: the caller did it)."""
        key = (r.executor, r.request_id)
        if key in self._keys or self.is_paid(*key):
            return False
        q = self._queue.setdefault(r.executor, [])
        q.append(r)
        self._keys.add(key)
        self.reserved += r.price
        self.on_queued()
        if len(q) >= self.max_receipts_per_pay:
            self.on_full()
        return True

    def dequeue(self, executor: str, receipts: list[Receipt]) -> None:
        """Remove ``receipts`` (queued for ``executor``)."""
        gone = {id(r) for r in receipts}
        q = [r for r in self._queue[executor] if id(r) not in gone]
        if q:
            self._queue[executor] = q
        else:
            del self._queue[executor]
        for r in receipts:
            self._keys.discard((r.executor, r.request_id))
            self.reserved -= r.price

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queue.values())

    def receipts(self) -> Iterator[Receipt]:
        for q in self._queue.values():
            yield from q

    def groups(self, free: int) -> list[list[Receipt]]:
        """The queued receipts ``free`` covers, per executor in queue order, split into
        groups that each fit one pay body."""
        groups: list[list[Receipt]] = []
        for q in self._queue.values():
            group: list[Receipt] = []
            size = 0
            for r in q:
                if r.price > free:
                    break  # this executor's later receipts wait too: pay in order
                n = len(r.encode()) + _RECEIPT_OVERHEAD
                if len(group) >= self.max_receipts_per_pay or size + n > MAX_BODY - 16:
                    groups.append(group)
                    group, size = [], 0
                group.append(r)
                size += n
                free -= r.price
            if group:
                groups.append(group)
        return groups

    def sync_log(self) -> None:
        """Make the unpaid log hold exactly what is queued (after a flush)."""
        if self.unpaid_log is not None:
            self.unpaid_log.rewrite(self.receipts())
