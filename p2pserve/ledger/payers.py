"""The executor side of payment: whether a requester can pay for the work it offers us, and
what it owes us until the ledger shows it paid. Pure: no I/O; the ledger state and the
clock are arguments.

A requester is admitted (:meth:`PayerBook.admit`) when its account is opened and not frozen,
its free credit in our view of the ledger covers the offer's worst-case price plus what it
owes us already (receipts we signed that the ledger does not show paid, and its other
offers running here), and none of its receipts to us is unpaid for longer than the grace
period. Memory is bounded: at most ``max_issued`` unpaid receipts are remembered (oldest
forgotten first).
"""

from __future__ import annotations

from p2pserve.ledger.state import LedgerState
from p2pserve.wire.infer import Receipt

__all__ = ["MAX_ISSUED", "Admission", "PayerBook"]

MAX_ISSUED = 100_000


class Admission:
    """An offer we took: its worst-case price counts against the requester's credit until
    :meth:`close`; :meth:`issued` records the receipt we signed for it."""

    __slots__ = ("_book", "open", "requester", "worst_case")

    def __init__(self, book: PayerBook, requester: str, worst_case: int) -> None:
        self._book = book
        self.requester = requester
        self.worst_case = worst_case
        self.open = True

    def issued(self, receipt: Receipt) -> None:
        if receipt.price > 0:
            self._book.issue(receipt)

    def close(self) -> None:
        if self.open:
            self.open = False
            self._book.release(self.requester, self.worst_case)


class PayerBook:
    """What requesters owe us (see the module docstring). ``me`` is our account."""

    def __init__(self, me: str, payment_grace_ms: int, *, max_issued: int = MAX_ISSUED) -> None:
        self.me = me
        self.payment_grace_ms = payment_grace_ms
        self.max_issued = max_issued
        self._exposure: dict[str, int] = {}
        """Worst-case prices of offers running here, per requester."""
        self._issued: dict[tuple[str, bytes], tuple[int, int]] = {}
        """(requester, request_id) -> (price, issued at ms), oldest first."""

    def admit(self, state: LedgerState, requester: str, worst_case: int, now_ms: int) -> Admission | str:
        """An :class:`Admission`, or the reason to refuse: ``no-account``, ``frozen``,
        ``unpaid`` (a receipt overdue) or ``no-credit``."""
        acct = state.account(requester)
        if acct is None:
            return "no-account"
        if acct.frozen:
            return "frozen"
        owed, overdue = self.owed_by(state, requester, now_ms)
        if overdue:
            return "unpaid"
        if acct.free_at(now_ms) - owed - self._exposure.get(requester, 0) < worst_case:
            return "no-credit"
        self._exposure[requester] = self._exposure.get(requester, 0) + worst_case
        return Admission(self, requester, worst_case)

    def issue(self, receipt: Receipt) -> None:
        """Remember a receipt we signed (its grace period runs from its own timestamp)."""
        self._issued[(receipt.requester, receipt.request_id)] = (receipt.price, receipt.timestamp_ms)
        while len(self._issued) > self.max_issued:
            del self._issued[next(iter(self._issued))]

    def release(self, requester: str, worst_case: int) -> None:
        left = self._exposure.get(requester, 0) - worst_case
        if left > 0:
            self._exposure[requester] = left
        else:
            self._exposure.pop(requester, None)

    def owed_by(self, state: LedgerState, requester: str, now_ms: int) -> tuple[int, bool]:
        """What ``requester`` owes us in receipts the ledger does not show paid, and whether
        one of them is overdue. Forgets the paid ones."""
        owed, overdue, paid = 0, False, []
        for key, (price, at) in self._issued.items():
            if key[0] != requester:
                continue
            if state.is_paid(self.me, key[1]):
                paid.append(key)
                continue
            owed += price
            overdue |= now_ms - at > self.payment_grace_ms
        for key in paid:
            del self._issued[key]
        return owed, overdue
