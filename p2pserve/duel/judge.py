"""The judge's side of duel-and-judge: ``/p2pserve/judge/1``.

A node with ``server_params.judge: true`` advertises judging in its status and answers
judge tasks. For each task it checks, in this order, everything a verdict block will be
checked for (so it never spends its model on a verdict the ledger would refuse): the order
is of this network and signed by its requester, both receipts by their executors; this
node is a judge the order draws (:func:`p2pserve.duel.draw.draw_judges`); the prompt and
the answers match the order's hashes; this node has not judged the order yet. Then it
judges with its method (:mod:`p2pserve.duel.methods`), writes the ``verdict`` block on its
own chain, and answers with the signed :class:`~p2pserve.wire.duel.Verdict`, whose fee
receipt the requester pays like any other. Anything wrong is answered with a
:class:`~p2pserve.wire.duel.JudgeRefusal` and its reason; nothing is written.

One exchange per stream, every wait bounded; at most ``max_concurrent`` judgements run at
once (more are refused ``busy``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from p2pserve.backends.base import Backend, TextDelta
from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.crypto import Signer, sha256
from p2pserve.duel.draw import draw_judges
from p2pserve.duel.methods import Generate, GenerateReference, JudgeMethod
from p2pserve.errors import BackendError, BadSignature, InvalidBlock, LedgerError, ProtocolError, TransportError
from p2pserve.eventlog import event
from p2pserve.ledger.blocks import VerdictBody
from p2pserve.ledger.service import LedgerService
from p2pserve.membership.ratelimit import LineBudget
from p2pserve.net.framed import FramedStream
from p2pserve.transport import Stream, Transport
from p2pserve.units import credits
from p2pserve.wire.duel import JUDGE_MODEL, JUDGE_PROTOCOL, JudgeRefusal, JudgeTask, Verdict, fee_request_id
from p2pserve.wire.infer import Receipt
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["JudgeService", "backend_generators", "question_of"]

log = logging.getLogger(__name__)


class JudgeService:
    """Judges the duels this node is drawn for. Start with ``nursery.start(run)``."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        ledger: LedgerService,
        method: JudgeMethod,
        *,
        clock: Clock = SYSTEM_CLOCK,
        limits: Limits = DEFAULT_LIMITS,
        recv_s: float = 30.0,
        judge_s: float = 100.0,
        max_concurrent: int = 2,
    ) -> None:
        self.transport = transport
        self.signer = signer
        self.ledger = ledger
        self.method = method
        self.clock = clock
        self.limits = limits
        self.recv_s = recv_s
        self.judge_s = judge_s
        self._slots = trio.Semaphore(max_concurrent)
        self._judging: set[bytes] = set()
        self.judged = 0
        self.refused = 0
        self._lines = LineBudget(burst=10, period=6.0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.transport.set_handler(JUDGE_PROTOCOL, self._handle)
        task_status.started()
        await trio.sleep_forever()

    async def _handle(self, stream: Stream) -> None:
        fs = FramedStream(stream, self.limits.max_frame)
        try:
            task = await fs.recv(JudgeTask, timeout=self.recv_s)
            answer = await self.judge(task)
            await fs.send(answer, timeout=self.recv_s)
        except (TransportError, ProtocolError) as exc:
            left_out = self._lines.take("judge_task_failed", trio.current_time())  # any peer can open streams
            if left_out is not None:
                event(log, "judge_task_failed", peer=stream.remote_peer, error=str(exc),
                      **({"lines_left_out": left_out} if left_out else {}))
        finally:
            await fs.aclose()

    async def judge(self, task: JudgeTask) -> Verdict | JudgeRefusal:
        """Check, judge, record and sign (see the module docstring)."""
        order_id = task.order.order_id()
        reason = self.refusal(task)
        if reason is None and self._slots.value == 0:
            reason = "busy"
        if reason is not None:
            self.refused += 1
            return JudgeRefusal(order_id, reason)
        self._judging.add(order_id)
        try:
            async with self._slots:
                return await self._judge(task, order_id)
        finally:
            self._judging.discard(order_id)

    def refusal(self, task: JudgeTask) -> str | None:
        """Why this node will not judge ``task`` (None: it will)."""
        order = task.order
        order_id = order.order_id()
        state = self.ledger.store.state
        if order.network_id != state.params.network_id:
            return "wrong-network"
        try:
            order.verify_all()
        except BadSignature as exc:
            return f"bad-signature: {exc}"
        drawn = draw_judges(order_id, [(c.peer_id, c.stake) for c in order.candidates], order.judges, order.parties)
        if self.signer.peer_id not in drawn:
            return "not-drawn"
        mismatch = task.mismatch()
        if mismatch is not None:
            return f"mismatch: {mismatch}"
        if order_id in self._judging or state.has_verdict(order_id, self.signer.peer_id):
            return "already-judged"
        return None

    async def _judge(self, task: JudgeTask, order_id: bytes) -> Verdict | JudgeRefusal:
        order = task.order
        try:
            with trio.fail_after(self.judge_s):
                result = await self.method.judge(question_of(task.body), task.answers[0], task.answers[1])
        except (BackendError, trio.TooSlowError) as exc:
            self.refused += 1
            return JudgeRefusal(order_id, f"could not judge: {exc!r}"[:1000])
        outcome = result.winner.value
        penalty = 0 if outcome == "tie" else self.ledger.store.params.duel_penalty // order.judges
        verdicts = tuple(v.value for v in result.verdicts)
        body = VerdictBody(order, outcome, result.method, verdicts, tuple(result.scores), penalty)
        try:
            await self.ledger.verdict(body)
        except (InvalidBlock, LedgerError) as exc:
            self.refused += 1
            log.warning("our verdict on order %s was not recorded: %s", order_id.hex()[:16], exc)
            return JudgeRefusal(order_id, f"not recorded: {exc}"[:1000])
        self.judged += 1
        a, b = (r.executor for r in order.receipts)
        event(log, "verdict", order=order_id[:8], requester=order.requester, a=a, b=b, outcome=outcome,
              method=result.method, penalty=credits(penalty))
        return Verdict(
            order_id, self.signer.peer_id, outcome, result.method, verdicts, tuple(result.scores),
            self._fee(order_id, order.requester, outcome), b"",
        ).signed(self.signer)

    def _fee(self, order_id: bytes, requester: str, outcome: str) -> Receipt | None:
        fee = self.ledger.store.params.judge_fee
        if fee <= 0:
            return None
        return Receipt(
            request_id=fee_request_id(order_id),
            network_id=self.ledger.store.params.network_id,
            requester=requester,
            executor=self.signer.peer_id,
            model=JUDGE_MODEL,
            request_hash=order_id,
            response_hash=sha256(outcome.encode()),
            prompt_tokens=0,
            completion_tokens=0,
            price=fee,
            partial=False,
            timestamp_ms=self.clock.wall_ms(),
            signature=b"",
        ).signed(self.signer)


def question_of(body: bytes) -> str:
    """The user question of an OpenAI request body, as a judge reads it: a completion's
    prompt; a chat's only user message, or the whole conversation as ``role: content``
    lines. Text parts only; an unreadable body is judged as its raw text."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    if not isinstance(data, dict):
        return body.decode("utf-8", "replace")
    if isinstance(data.get("prompt"), str):
        return str(data["prompt"])
    messages = data.get("messages")
    if not isinstance(messages, list):
        return body.decode("utf-8", "replace")
    lines = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append((str(m.get("role", "user")) if isinstance(m, dict) else "user", str(content or "")))
    if len(lines) == 1 and lines[0][0] == "user":
        return lines[0][1]
    return "\n".join(f"{role}: {content}" for role, content in lines)


def backend_generators(backend: Backend, *, max_tokens: int = 256) -> tuple[Generate, GenerateReference]:
    """A judge's two model calls on one of its local backends (greedy: temperature 0)."""

    async def generate(messages: list[dict[str, str]]) -> str:
        body = {"model": backend.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        parts = []
        async for ev in backend.generate("chat", body):
            if isinstance(ev, TextDelta):
                parts.append(ev.text)
        return "".join(parts)

    async def reference(question: str) -> str:
        return await generate([{"role": "user", "content": question}])

    return generate, reference
