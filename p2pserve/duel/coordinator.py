"""The requester's side of duel-and-judge: sample offloaded requests, run the shadow, order
the judgement, pay the judges. Driven by :class:`~p2pserve.duel.machine.DuelMachine`.

* **Sampling.** :meth:`DuelCoordinator.consider` hears of every completed user request
  (``ServeService.on_completed``). With probability ``rate`` (drawn from the request's own
  seeded stream) a request answered by one remote executor, in one piece, becomes a duel.
  It returns at once: the user already has the answer, so a duel adds no latency to it.
* **Shadow.** A second executor is routed by the same stake-weighted router, without the
  first, and gets an ordinary offer of the same body bytes (``ServeService.run_on``): a
  fresh request ID and timestamp, as any offer; nothing in it says "duel". It is paid for
  like any request. It runs in this service's nursery.
* **Order and draw.** With both complete answers and receipts, the requester signs a
  :class:`~p2pserve.wire.duel.DuelOrder` listing the judges it knows (nodes whose status
  says they judge, with the stake routing credits them) and draws ``judges`` of them from
  the order's hash (:mod:`p2pserve.duel.draw`).
* **Judging.** Each drawn judge gets the prompt and both answers on ``/p2pserve/judge/1``;
  its fee is held first and its signed verdict's fee receipt is paid through the hold. The
  judge writes the verdict block; the requester writes nothing.

A duel ends abandoned, with nothing moved, when no second executor takes it, the shadow
fails, no judge is known or none answers; every step is bounded (:class:`Deadlines`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from p2pserve.backends.base import Kind
from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.crypto import Signer
from p2pserve.duel.draw import draw_judges
from p2pserve.duel.machine import Deadlines, DuelMachine
from p2pserve.errors import BadSignature, ProtocolError, TransportError
from p2pserve.eventlog import event
from p2pserve.ledger.service import LedgerService
from p2pserve.membership.table import PeerTable
from p2pserve.net.exchange import open_framed
from p2pserve.rng import derive
from p2pserve.serving.events import Completed
from p2pserve.serving.service import ServeService
from p2pserve.transport import Transport
from p2pserve.wire.duel import (
    JUDGE_MODEL,
    JUDGE_PROTOCOL,
    MAX_CANDIDATES,
    DuelOrder,
    JudgeCandidate,
    JudgeRefusal,
    JudgeTask,
    Verdict,
    fee_request_id,
)
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["DuelCoordinator", "DuelCounters"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DuelCounters:
    started: int = 0
    """Duels this node started as requester."""
    settled: int = 0
    """Duels that got at least one verdict."""
    abandoned: int = 0
    verdicts: int = 0
    """Verdicts received (and their judges paid)."""
    no_judge: int = 0
    """Requests drawn for a duel but not dueled: no judge other than their executor is known."""


@dataclass(frozen=True, slots=True)
class _Answer:
    text: str
    done: Completed


class DuelCoordinator:
    """Starts duels among this node's offloaded requests. Start with ``nursery.start(run)``."""

    def __init__(
        self,
        serve: ServeService,
        ledger: LedgerService,
        peers: PeerTable,
        transport: Transport,
        signer: Signer,
        *,
        rate: float,
        judges: int = 1,
        seed: int,
        deadlines: Deadlines = Deadlines(),
        clock: Clock = SYSTEM_CLOCK,
        limits: Limits = DEFAULT_LIMITS,
        max_running: int = 16,
    ) -> None:
        self.serve = serve
        self.ledger = ledger
        self.peers = peers
        self.transport = transport
        self.signer = signer
        self.rate = rate
        self.judges = judges
        self.seed = seed
        self.deadlines = deadlines
        self.clock = clock
        self.limits = limits
        self.max_running = max_running
        self.counters = DuelCounters()
        self.running = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def consider(self, kind: Kind, model: str, body: dict[str, Any], text: str, done: Completed, key: str) -> None:
        """Maybe start a duel on a completed user request (module docstring); never blocks."""
        if self._nursery is None or self.rate <= 0 or self.running >= self.max_running:
            return
        offer = done.offer
        if done.local or offer is None or done.receipt is None or len(done.receipts) != 1 or offer.continuation:
            return  # a duel compares two whole answers to the same fresh prompt
        if derive(self.seed, "duel", key).random() >= self.rate:
            return
        if not any(e.status.judge and e.peer_id != done.executor for e in self.peers.entries()):
            self.counters.no_judge += 1
            return  # nobody could judge it: do not pay a second executor for nothing
        self.counters.started += 1
        self.running += 1
        event(log, "duel_started", req=key, model=model, first=done.executor)
        self._nursery.start_soon(self._duel, kind, model, body, _Answer(text, done), key)

    async def _duel(self, kind: Kind, model: str, body: dict[str, Any], first: _Answer, key: str) -> None:
        m = DuelMachine(trio.current_time(), self.deadlines)
        try:
            await self._drive(m, kind, model, body, first, key)
        except (TransportError, ProtocolError) as exc:
            m.reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.running -= 1
            if m.verdicts:
                self.counters.settled += 1
            else:
                self.counters.abandoned += 1
                event(log, "duel_abandoned", req=key, model=model, reason=m.reason or m.state.value)

    async def _drive(self, m: DuelMachine, kind: Kind, model: str, body: dict[str, Any], first: _Answer, key: str) -> None:
        assert first.done.offer is not None
        others = [e for e in self.peers.entries() if e.model(model) is not None and e.peer_id != first.done.executor]
        if not any(self._judgeable(first.done.executor, e.peer_id) for e in others):
            m.no_executor(trio.current_time())  # nobody else serves it, or no judge would be left
            return
        m.shadow_started(trio.current_time())
        second = None
        with trio.move_on_after(self.deadlines.shadow_s):
            second = await self._shadow(kind, model, body, first, key)
        if second is None or second.done.receipt is None or second.done.offer is None:
            m.shadow_failed(trio.current_time(), "no complete, verified answer")
            return
        m.shadow_done(trio.current_time())
        order = self._order(first, second)
        drawn = draw_judges(order.order_id(), [(c.peer_id, c.stake) for c in order.candidates], order.judges, order.parties)
        if not drawn:
            m.no_judge(trio.current_time())
            return
        m.judges_asked(trio.current_time(), len(drawn))
        task = JudgeTask(order, first.done.offer.body, (first.text, second.text))
        with trio.move_on_after(self.deadlines.judging_s):
            async with trio.open_nursery() as nursery:
                for judge in drawn:
                    nursery.start_soon(self._ask, m, judge, task)
        if not m.over:
            m.timeout(max(trio.current_time(), m.deadline or 0.0))

    async def _shadow(self, kind: Kind, model: str, body: dict[str, Any], first: _Answer, key: str) -> _Answer | None:
        """The second answer: offered to an executor routed like any (without the first);
        while none is accepting or the one offered declines (busy), offered again after a
        backoff, re-routed each time, until the caller's shadow deadline."""
        assert first.done.offer is not None
        delay, tries = 0.5, 0
        while True:
            peer = self._second_executor(model, first.done.executor, key, tries)
            if peer is not None:
                busy, text, done = await self.serve.run_on(peer, kind, model, body, first.done.offer.body, key=key)
                if done is not None:
                    return _Answer(text, done)
                if not busy:
                    return None  # it failed (or misbehaved): that ends the duel
            await trio.sleep(delay)
            delay, tries = min(2 * delay, 10.0), tries + 1

    def _judgeable(self, first: str, second: str) -> bool:
        """Whether a duel between ``first`` and ``second`` would have a judge to draw."""
        parties = {self.signer.peer_id, first, second}
        return any(e.status.judge and e.peer_id not in parties for e in self.peers.entries())

    def _second_executor(self, model: str, first: str, key: str, tries: int = 0) -> str | None:
        """Routed like any offer, among the accepting executors that leave a judge to draw."""
        candidates = [
            e for e in self.peers.candidates(model, exclude={first})
            if e.peer_id != self.signer.peer_id and self._judgeable(first, e.peer_id)
        ]
        rng = derive(self.seed, "duel-route", key, tries)
        route = self.serve.router.route(model, candidates, 1, trio.current_time(), rng)
        return route[0] if route else None

    def _order(self, first: _Answer, second: _Answer) -> DuelOrder:
        a, b = first.done, second.done
        assert a.offer is not None and b.offer is not None and a.receipt is not None and b.receipt is not None
        parties = {self.signer.peer_id, a.executor, b.executor}
        listed = sorted(
            (JudgeCandidate(e.peer_id, stake) for e in self.peers.entries()
             if e.status.judge and e.peer_id not in parties and (stake := self.serve.stake_of(e)) > 0),
            key=lambda c: (-c.stake, c.peer_id),
        )[:MAX_CANDIDATES]
        order = DuelOrder(
            network_id=self.ledger.store.params.network_id,
            requester=self.signer.peer_id,
            headers=(a.offer.header(), b.offer.header()),
            receipts=(a.receipt, b.receipt),
            candidates=tuple(sorted(listed, key=lambda c: c.peer_id)),
            judges=self.judges,
            signature=b"",
        )
        return order.signed(self.signer)

    async def _ask(self, m: DuelMachine, judge: str, task: JudgeTask) -> None:
        """One judge: hold its fee, send the task, check and pay its verdict."""
        fee = self.ledger.store.params.judge_fee
        hold = self.ledger.hold(fee) if fee > 0 else None
        if fee > 0 and hold is None:
            m.judge_failed(trio.current_time(), "cannot afford the judge's fee")
            return
        try:
            answer = await self._exchange(judge, task)
            delay = 1.0
            while isinstance(answer, JudgeRefusal) and answer.reason == "busy":  # bounded by the judging deadline
                await trio.sleep(delay)
                delay = min(2 * delay, 15.0)
                answer = await self._exchange(judge, task)
            problem = self._check(answer, judge, task.order)
            if problem is not None:
                m.judge_failed(trio.current_time(), f"{judge}: {problem}")
                return
            assert isinstance(answer, Verdict)
            if hold is not None and answer.fee is not None:
                hold.pay(answer.fee)
            self.counters.verdicts += 1
            m.verdict(trio.current_time())
            a, b = (r.executor for r in task.order.receipts)
            event(log, "duel_judged", order=task.order.order_id()[:8], judge=judge, outcome=answer.outcome, a=a, b=b,
                  method=answer.method)
        except (TransportError, ProtocolError) as exc:
            m.judge_failed(trio.current_time(), f"{judge}: {type(exc).__name__}: {exc}")
        finally:
            if hold is not None:
                hold.release()

    async def _exchange(self, judge: str, task: JudgeTask) -> Verdict | JudgeRefusal:
        fs = await open_framed(self.transport, judge, JUDGE_PROTOCOL, connect_s=10.0, max_frame=self.limits.max_frame)
        try:
            await fs.send(task, timeout=30.0)
            return await fs.recv((Verdict, JudgeRefusal), timeout=self.deadlines.judging_s)
        finally:
            with trio.CancelScope(shield=True):
                await fs.aclose()

    def _check(self, answer: Verdict | JudgeRefusal, judge: str, order: DuelOrder) -> str | None:
        """Why ``answer`` is not a verdict to pay for (None: it is)."""
        if isinstance(answer, JudgeRefusal):
            return f"refused: {answer.reason}"
        if answer.judge != judge or answer.order_id != order.order_id():
            return "a verdict for another order or from another judge"
        try:
            answer.verify()
            if answer.fee is not None:
                answer.fee.verify()
        except BadSignature as exc:
            return f"bad signature: {exc}"
        fee = answer.fee
        params = self.ledger.store.params
        if params.judge_fee > 0 and (
            fee is None or fee.executor != judge or fee.requester != self.signer.peer_id or fee.price != params.judge_fee
            or fee.request_id != fee_request_id(answer.order_id) or fee.model != JUDGE_MODEL
            or fee.network_id != params.network_id
        ):
            return "its fee receipt is not the network's judge fee for this order"
        return None
