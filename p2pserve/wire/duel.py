"""Wire messages of duel-and-judge (tags 50-69): the requester's signed :class:`DuelOrder`,
what a judge receives on ``/p2pserve/judge/1`` (:class:`JudgeTask`) and what it answers
(:class:`Verdict` or :class:`JudgeRefusal`). The ledger's verdict block embeds the order.

An order is self-checking (``_check``): everything that makes it a well-formed duel is
verifiable from its bytes alone, so the ledger rules, ``audit`` and a judge all refuse
the same orders for the same reasons. What needs signatures (the requester's on the order,
the executors' on their receipts) is checked by :meth:`DuelOrder.verify_all`.
"""

from __future__ import annotations

from p2pserve.crypto import sha256
from p2pserve.errors import MalformedMessage
from p2pserve.wire.codec import Message, SignedMessage, message
from p2pserve.wire.infer import REQUEST_ID_SIZE, Receipt, RequestHeader
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = [
    "JUDGE_MODEL",
    "JUDGE_PROTOCOL",
    "MAX_CANDIDATES",
    "MAX_JUDGES",
    "OUTCOMES",
    "DuelOrder",
    "JudgeCandidate",
    "JudgeRefusal",
    "JudgeTask",
    "Verdict",
    "check_outcome",
    "fee_request_id",
]

JUDGE_PROTOCOL = "/p2pserve/judge/1"

MAX_CANDIDATES = 32
"""Most judge candidates an order lists (an order must fit a ledger block with room to spare)."""

MAX_JUDGES = 5
"""Most judges one duel may ask for."""

OUTCOMES = ("A", "B", "tie")
"""A verdict's outcome: the order's first executor won, its second, or neither."""

JUDGE_MODEL = "p2pserve/judge"
"""The ``model`` of the receipt a judge signs for its fee."""

_NO_CONTINUATION = sha256(b"")
_MAX_METHOD = 100
_MAX_DETAILS = 4


@message(51)
class JudgeCandidate(Message):
    """A node the requester saw advertising judging, with the stake it saw (micro-credits)."""

    peer_id: str
    stake: int

    def _check(self) -> None:
        if not 1 <= len(self.peer_id) <= 128:
            raise MalformedMessage("candidate peer_id must be 1-128 characters")
        if self.stake <= 0:
            raise MalformedMessage("a candidate's stake must be > 0")


@message(50)
class DuelOrder(SignedMessage):
    """The requester's signed request for judgement of one duel; its ``digest()`` is the
    order ID, and the randomness of the judge draw (:mod:`p2pserve.duel.draw`).

    ``headers[i]`` is the offer executor ``i`` answered and ``receipts[i]`` its complete
    receipt; both offers carry the same prompt (equal ``body_hash``), model and kind, no
    continuation, and come from this requester. ``candidates`` are sorted by peer ID,
    unique, and exclude the three parties. ``judges`` is how many are drawn."""

    network_id: str
    requester: str
    headers: tuple[RequestHeader, ...]
    receipts: tuple[Receipt, ...]
    candidates: tuple[JudgeCandidate, ...]
    judges: int
    signature: bytes

    SIGNER = "requester"

    def _check(self) -> None:
        if len(self.headers) != 2 or len(self.receipts) != 2:
            raise MalformedMessage("a duel order has exactly two headers and two receipts")
        if not 1 <= self.judges <= MAX_JUDGES:
            raise MalformedMessage(f"judges must be 1-{MAX_JUDGES}")
        self._check_pair()
        self._check_candidates()

    def _check_pair(self) -> None:
        (ha, hb), (ra, rb) = self.headers, self.receipts
        for h, r in ((ha, ra), (hb, rb)):
            if r.request_hash != h.hash() or r.request_id != h.request_id:
                raise MalformedMessage("a receipt does not answer its header")
            if not (h.requester == r.requester == self.requester):
                raise MalformedMessage("both offers must come from the order's requester")
            if h.executor != r.executor or h.network_id != self.network_id or r.network_id != self.network_id:
                raise MalformedMessage("a receipt's executor or network differs from its offer")
            if r.partial or h.continuation_hash != _NO_CONTINUATION:
                raise MalformedMessage("only complete answers to a fresh prompt are dueled")
        if ha.executor == hb.executor or self.requester in (ha.executor, hb.executor):
            raise MalformedMessage("a duel needs two executors other than the requester")
        if ha.body_hash != hb.body_hash or ha.model != hb.model or ha.kind != hb.kind:
            raise MalformedMessage("both offers must carry the same prompt, model and kind")

    def _check_candidates(self) -> None:
        ids = [c.peer_id for c in self.candidates]
        if len(ids) > MAX_CANDIDATES:
            raise MalformedMessage(f"more than {MAX_CANDIDATES} judge candidates")
        if any(a >= b for a, b in zip(ids, ids[1:], strict=False)):
            raise MalformedMessage("judge candidates must be sorted by peer ID, without repeats")
        if set(ids) & set(self.parties):
            raise MalformedMessage("the requester and the executors cannot be judge candidates")

    @property
    def executors(self) -> tuple[str, str]:
        return self.receipts[0].executor, self.receipts[1].executor

    @property
    def parties(self) -> tuple[str, str, str]:
        """The requester and both executors: never judges."""
        return self.requester, *self.executors

    def order_id(self) -> bytes:
        return self.digest()

    def verify_all(self) -> None:
        """Raise BadSignature unless the requester signed the order and each executor its receipt."""
        self.verify()
        for r in self.receipts:
            r.verify()


@message(52)
class JudgeTask(Message):
    """What a drawn judge needs: the order, the prompt (the OpenAI body both executors got)
    and both answers, in the order's order. The judge checks them against the hashes the
    order carries (``body_hash``, the receipts' ``response_hash``)."""

    order: DuelOrder
    body: bytes
    answers: tuple[str, ...]

    def _check(self) -> None:
        if len(self.answers) != 2:
            raise MalformedMessage("a judge task carries exactly two answers")
        if len(self.body) > DEFAULT_LIMITS.max_prompt:
            raise MalformedMessage("the prompt exceeds max_prompt")

    def mismatch(self) -> str | None:
        """Why the prompt or an answer does not match the order, or None."""
        if sha256(self.body) != self.order.headers[0].body_hash:
            return "the prompt does not match the order"
        for answer, r in zip(self.answers, self.order.receipts, strict=True):
            if sha256(answer.encode()) != r.response_hash:
                return "an answer does not match its receipt"
        return None


@message(53)
class Verdict(SignedMessage):
    """A judge's signed answer to a task. ``outcome`` is one of :data:`OUTCOMES`;
    ``verdicts`` and ``scores`` are the method's per-order results
    (:class:`p2pserve.duel.judging.JudgeResult`). ``fee`` is the judge's receipt for its
    work (price: the network's ``judge_fee``), which the requester pays like any other;
    None when the fee is zero. The judge also records the verdict on its own chain."""

    order_id: bytes
    judge: str
    outcome: str
    method: str
    verdicts: tuple[str, ...]
    scores: tuple[int, ...]
    fee: Receipt | None
    signature: bytes

    SIGNER = "judge"

    def _check(self) -> None:
        if len(self.order_id) != 32:
            raise MalformedMessage("order_id must be 32 bytes")
        check_outcome(self.outcome, self.method, self.verdicts, self.scores)


@message(54)
class JudgeRefusal(Message):
    """The judge will not judge this order (not drawn, not judging, busy, bad task)."""

    order_id: bytes
    reason: str

    def _check(self) -> None:
        if len(self.reason) > 1024:
            raise MalformedMessage("reason longer than 1024 characters")


def check_outcome(outcome: str, method: str, verdicts: tuple[str, ...], scores: tuple[int, ...]) -> None:
    """The shape every verdict (message or block) shares; MalformedMessage otherwise."""
    if outcome not in OUTCOMES:
        raise MalformedMessage(f"outcome must be one of {OUTCOMES}")
    if not 1 <= len(method) <= _MAX_METHOD:
        raise MalformedMessage(f"method must be 1-{_MAX_METHOD} characters")
    if len(verdicts) > _MAX_DETAILS or len(scores) > _MAX_DETAILS or any(v not in OUTCOMES for v in verdicts):
        raise MalformedMessage("at most four per-order verdicts (each an outcome) and four scores")


def fee_request_id(order_id: bytes) -> bytes:
    """The ``request_id`` of a judge's fee receipt for ``order_id``."""
    return order_id[:REQUEST_ID_SIZE]
