"""Serving requests: run locally, or forward over ``/p2pserve/infer/1`` with fail-over.

This module owns :class:`ServeService`, the node's serving service and the public entry
point: it holds both sides of the infer protocol and the node's own request queue, and
decides where each of its users' requests runs. The pieces live in modules of their own,
and every name they export that callers use is re-exported here:

* :mod:`p2pserve.serving.events`: the protocol id, :class:`Deadlines`, the events a request
  yields, :class:`ServeCounters` (pure data);
* :mod:`p2pserve.serving.receipts`: :func:`price_for`, :func:`check_receipt`, :class:`ReplayGuard`
  (pure);
* :mod:`p2pserve.serving.client`: the requester's session streams and one remote try;
* :mod:`p2pserve.serving.executor`: the executor side, answering peers' offers.

Deadlines on every step (:class:`Deadlines`). The requester's guarantees:

* **an answer or a clear error, never a hang**: every wait is bounded; a request that finds
  no executor within ``PolicyParams.max_wait_s`` fails with NoCapacity (HTTP 503);
* **before the first token**, a rejecting, stalled, vanished or misbehaving executor means
  the next PoS candidate, then (policy permitting) a local model;
* **after tokens were delivered**, the answer continues on another executor (or locally)
  from the text already delivered, when that executor's backend supports continuation;
  otherwise it ends with :class:`~p2pserve.errors.RequestFailed`;
* **never two answers**: one executor streams at a time; an abandoned executor's stream is
  closed unread, so its late reply is dropped;
* receipts are checked (signature, executor, requester, request hash, response hash of the
  text received, price within the advertised price) before ``on_receipt`` pays them.

The executor's guarantees are in :mod:`p2pserve.serving.executor`.

Every loop runs in the nursery of :meth:`ServeService.run`; requests run in the task of
whoever iterates :meth:`ServeService.submit`, as an async generator closed by its context
manager (no task and no channel hop per event: the generators in the request path never
yield inside a cancel scope or a nursery). Nothing is fire-and-forget.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any

import trio

from p2pserve.backends.base import Backend, Finished, Kind, Load, TextDelta
from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.crypto import Signer
from p2pserve.errors import BackendError, BadRequest, NoCapacity, RequestFailed, UnknownModel
from p2pserve.membership.table import PeerEntry, PeerTable
from p2pserve.net.framed import FramedStream
from p2pserve.policies import LocalModel, Offload, Policy, PolicyParams, Queue, RequestContext, RunLocal, Wait
from p2pserve.routing import choose_candidates
from p2pserve.serving.client import InferClient
from p2pserve.serving.events import (
    INFER_PROTOCOL,
    Attempt,
    Completed,
    Deadlines,
    DispatchSettings,
    Progress,
    ServeCounters,
    ServeEvent,
    Started,
    Wallet,
)
from p2pserve.serving.executor import InferExecutor
from p2pserve.serving.offenders import OffenderBook
from p2pserve.serving.receipts import Bounds, ReplayGuard, check_receipt, price_for
from p2pserve.serving.replay_log import ReplayLog
from p2pserve.transport import Transport
from p2pserve.wire.limits import DEFAULT_LIMITS
from p2pserve.wire.messages import ModelStatus, Receipt

__all__ = [
    "INFER_PROTOCOL",
    "Completed",
    "Deadlines",
    "ReplayGuard",
    "ServeCounters",
    "ServeEvent",
    "ServeService",
    "Started",
    "TextDelta",
    "check_receipt",
    "price_for",
]

log = logging.getLogger(__name__)


class ServeService:
    """Request forwarding and local execution for one node. Start with ``nursery.start(run)``.

    ``backends`` maps model name → backend (empty for a gateway). ``dispatch`` and
    ``prices`` (micro-credits per 1k output tokens, default 0) are per model.
    ``wallet`` (the node's ledger) holds each offer's worst-case price before it is sent,
    pays receipts through the hold, and decides which peers' offers this node may take
    (no wallet: everything is free, as in unit tests). ``on_receipt`` is awaited with every
    verified receipt (an observer; errors it raises are logged, never shown to the user).
    ``offenders`` remembers executors that misbehaved (cooling-off, then probation). ``stake_of`` is a peer's stake for PoS (the node
    passes its ledger's view; default: the stake the peer claims). ``clock`` stamps offers and checks
    their age; everything else uses trio's clock.

    The requester's remote tries run in an :class:`~p2pserve.serving.client.InferClient` and
    peers' offers in an :class:`~p2pserve.serving.executor.InferExecutor`; both share this
    service's ``backends``, ``prices`` and ``counters`` objects (a price changed here
    applies to the next offer).
    """

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        network_id: str,
        peers: PeerTable,
        backends: Mapping[str, Backend],
        policy: Policy,
        params: PolicyParams,
        rng: random.Random,
        *,
        dispatch: Mapping[str, DispatchSettings] | None = None,
        prices: Mapping[str, int] | None = None,
        deadlines: Deadlines = Deadlines(),
        on_receipt: Callable[[Receipt], Awaitable[None]] | None = None,
        wallet: Wallet | None = None,
        stake_of: Callable[[PeerEntry], int] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        load_interval: float = 1.0,
        offenders: OffenderBook | None = None,
        replay_log: ReplayLog | None = None,
    ) -> None:
        if transport.peer_id != signer.peer_id:
            raise ValueError("transport and signer disagree on the peer id")
        self.transport = transport
        self.signer = signer
        self.network_id = network_id
        self.peers = peers
        self.backends = dict(backends)
        self.policy = policy
        self.params = params
        self.rng = rng
        self.dispatch = dict(dispatch or {})
        self.prices = dict(prices or {})
        self.deadlines = deadlines
        self.on_receipt = on_receipt
        self.wallet = wallet
        self.offenders = offenders if offenders is not None else OffenderBook()
        self.stake_of: Callable[[PeerEntry], int] = stake_of or (lambda e: e.status.stake)
        self.clock = clock
        self.load_interval = load_interval
        self.counters = ServeCounters()
        self._loads: dict[str, Load] = {m: Load() for m in self.backends}
        self._inflight: Counter[str] = Counter()
        """Requests running on each local model, ours and peers'."""
        self._waiting: Counter[str] = Counter()
        """Our own users' requests per model not yet placed on an executor (our backlog)."""
        self._client = InferClient(
            transport, signer, network_id, peers, rng,
            deadlines=deadlines, counters=self.counters, on_receipt=on_receipt, clock=clock,
            wallet=wallet, offenders=self.offenders,
        )
        self._executor = InferExecutor(
            signer, network_id, self.backends, self.prices, policy, rng,
            deadlines=deadlines, counters=self.counters, inflight=self._inflight,
            local_model=self._local_model, read_load=self._read_load, backlog=self.backlog,
            clock=clock, wallet=wallet, replay_log=replay_log,
        )
        self.replay: ReplayGuard = self._executor.replay

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    @property
    def _idle(self) -> dict[str, list[tuple[float, FramedStream]]]:
        """The requester's idle session streams per executor (see :class:`InferClient`)."""
        return self._client.idle

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve peers' offers and keep local loads fresh until cancelled."""
        self.transport.set_handler(INFER_PROTOCOL, self._executor.handle_offer)
        try:
            async with trio.open_nursery() as nursery:
                await self._refresh_loads()
                nursery.start_soon(self._load_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._client.close_idle(math.inf)
            if self._executor.replay_log is not None:
                self._executor.replay_log.close()

    async def _load_loop(self) -> None:
        while True:
            await trio.sleep(self.load_interval)
            await self._refresh_loads()
            await self._client.close_idle(self.deadlines.pool_idle_s)

    async def _refresh_loads(self) -> None:
        for name in self.backends:
            await self._read_load(name)

    async def _read_load(self, name: str) -> Load:
        try:
            load = await self.backends[name].load()
        except BackendError as exc:
            log.debug("load of %s unreadable: %s", name, exc)
            load = Load(source="unknown")
        self._loads[name] = load
        return load

    # --- views ----------------------------------------------------------------------------

    def known_models(self) -> set[str]:
        """Models served locally or by any known peer."""
        return set(self.backends) | self.peers.models()

    def backlog(self) -> int:
        """Our own users' requests still waiting for an executor."""
        return sum(self._waiting.values())

    def _local_model(self, name: str) -> LocalModel:
        backend = self.backends[name]
        settings = self.dispatch.get(name)
        target = settings.target_token_usage if settings is not None else 0.6
        conc = settings.max_concurrency if settings is not None else None
        return LocalModel(
            name,
            self._loads.get(name, Load()),
            target,
            conc if conc is not None else backend.max_concurrency,
            self._inflight[name],
        )

    def model_status(self) -> tuple[ModelStatus, ...]:
        """One gossip entry per local model, from the last loads read."""
        out = []
        backlog = self.backlog()
        for name, backend in self.backends.items():
            m = self._local_model(name)
            out.append(
                ModelStatus(
                    name=name,
                    context_length=backend.context_length,
                    price_per_1k=self.prices.get(name, 0),
                    running=max(m.load.running, m.inflight),
                    queued=m.load.queued + self._waiting[name],
                    token_usage=m.load.token_usage,
                    accepting=self.policy.accepting(m, backlog),
                )
            )
        return tuple(out)

    # --- requester ------------------------------------------------------------------------

    def submit(self, kind: Kind, model: str, body: dict[str, Any]) -> AbstractAsyncContextManager[AsyncIterator[ServeEvent]]:
        """Serve one user request: ``async with serve.submit(...) as events: async for ev in events``.

        Events: per executor a :class:`Started` then its :class:`TextDelta` s; finally one
        :class:`Completed`. Errors (:class:`~p2pserve.errors.ServingError`: UnknownModel,
        BadRequest, NoCapacity, RequestFailed) are raised by the iteration, after the events
        that preceded them, and so leave the ``async with`` block. Leaving the block early
        stops the request and closes its stream. The request runs in the iterating task
        (it advances only while the caller waits for the next event), so one task iterates.
        """
        return aclosing(self._serve(kind, model, body))

    async def _serve(self, kind: Kind, model: str, body: dict[str, Any]) -> AsyncGenerator[ServeEvent, None]:
        self.counters.requests += 1
        try:
            async with aclosing(self._serve_inner(kind, model, body)) as sub:
                async for ev in sub:
                    yield ev
        except BaseException:
            self.counters.failures += 1
            raise

    async def _serve_inner(self, kind: Kind, model: str, body: dict[str, Any]) -> AsyncGenerator[ServeEvent, None]:
        if kind not in ("chat", "completion"):
            raise BadRequest(f"unknown request kind {kind!r}")
        body_bytes = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        if len(body_bytes) > DEFAULT_LIMITS.max_prompt:
            raise BadRequest(f"request body of {len(body_bytes)} bytes exceeds {DEFAULT_LIMITS.max_prompt}")
        if model not in self.known_models():
            raise UnknownModel(f"no node in reach serves model {model!r}")
        progress = Progress()
        t0 = trio.current_time()
        wait_deadline = t0 + self.params.max_wait_s
        offload_failed = False
        local_failed = False
        last_round = -math.inf
        self._waiting[model] += 1
        waiting = True
        try:
            while True:
                now = trio.current_time()
                local = [] if local_failed or model not in self.backends else [self._local_model(model)]
                candidates = self._candidate_entries(model, body, progress.excluded)
                ctx = RequestContext(model, bool(candidates), offload_failed, now - t0)
                decision = self.policy.decide(ctx, local, now, self.rng)
                if isinstance(decision, Offload) and not candidates:
                    decision = Wait(self.params.retry_interval_s)  # a policy that ignored has_candidates
                if isinstance(decision, Offload) and offload_failed and now - last_round < self.params.retry_interval_s:
                    decision = Wait(last_round + self.params.retry_interval_s - now)
                if isinstance(decision, Wait):
                    if local_failed and not candidates or now + decision.delay > wait_deadline:
                        raise NoCapacity(self._no_capacity_message(model, progress, now - t0, local_failed))
                    await trio.sleep(decision.delay)
                    continue
                self._waiting[model] -= 1
                waiting = False
                attempt = Attempt()
                if isinstance(decision, (RunLocal, Queue)):
                    if decision.model not in self.backends or decision.model != model:
                        raise RequestFailed(f"policy chose local model {decision.model!r} for {model!r}")
                    async with aclosing(self._run_local(decision.model, kind, body, progress, attempt)) as sub:
                        async for ev in sub:
                            yield ev
                    if attempt.outcome == "refused":
                        local_failed = True
                else:
                    last_round = trio.current_time()
                    attempts: list[Attempt] = []
                    async with aclosing(self._offer_round(candidates, kind, model, body, body_bytes, progress, attempts)) as sub:
                        async for ev in sub:
                            yield ev
                    self.counters.failovers += sum(a.outcome == "refused" for a in attempts)
                    attempt = attempts[-1] if attempts else attempt
                    offload_failed = attempt.outcome == "refused"
                if attempt.outcome == "completed":
                    assert attempt.completed is not None
                    yield attempt.completed
                    return
                if attempt.outcome == "failed":
                    async with aclosing(self._continue(kind, model, body_bytes, body, progress)) as sub:
                        async for ev in sub:
                            yield ev
                    return
                self._waiting[model] += 1
                waiting = True
        finally:
            if waiting:
                self._waiting[model] -= 1

    async def _offer_round(
        self, candidates: list[PeerEntry], kind: Kind, model: str, body: dict[str, Any], body_bytes: bytes,
        progress: Progress, attempts: list[Attempt],
    ) -> AsyncGenerator[ServeEvent, None]:
        """Offer to the PoS-chosen candidates one after another until one does not refuse.

        Yields that executor's events; ``attempts`` receives one Attempt per peer tried (the
        last one says how the round ended; empty if there was nobody to offer to)."""
        for peer in self._choose(candidates):
            attempt = Attempt()
            attempts.append(attempt)
            async with aclosing(self._client.run_remote(peer, kind, model, body, body_bytes, progress, attempt)) as sub:
                async for ev in sub:
                    yield ev
            if attempt.outcome != "refused":
                return

    def _choose(self, candidates: list[PeerEntry]) -> list[str]:
        """The peers to offer a request to: clean peers in PoS order, then peers on probation
        (past offenders, see :mod:`p2pserve.serving.offenders`) in PoS order, whatever their stake."""
        by_id = {e.peer_id: e for e in candidates}
        clean, probation = self.offenders.split(sorted(by_id), trio.current_time())
        k = self.params.offer_fanout
        first = choose_candidates(
            [by_id[p] for p in clean], self.rng, k, self.params.newcomer_share, stake_of=self.stake_of
        )
        if len(first) >= k or not probation:
            return first
        rest = choose_candidates(
            [by_id[p] for p in probation], self.rng, k - len(first), self.params.newcomer_share, stake_of=self.stake_of
        )
        return first + rest

    def _candidate_entries(self, model: str, body: dict[str, Any], exclude: set[str]) -> list[Any]:
        """Peers to consider: alive, accepting, not excluded for this request, not cooling
        off after an offence, and (with a wallet) affordable at their worst-case price."""
        now = trio.current_time()
        entries = [e for e in self.peers.candidates(model, exclude=exclude) if not self.offenders.cooling(e.peer_id, now)]
        if self.wallet is None:
            return entries
        out = []
        for e in entries:
            m = e.model(model)
            assert m is not None
            worst = Bounds.of(body, 0, "", m.context_length).worst_case_tokens()
            if self.wallet.can_afford(price_for(worst, m.price_per_1k)):
                out.append(e)
        return out

    def _no_capacity_message(self, model: str, progress: Progress, waited: float, local_failed: bool) -> str:
        tried = "; ".join(progress.reasons[-5:]) or "no peer serving it was accepting work"
        local = "the local backend failed" if local_failed else (
            "no local model serves it" if model not in self.backends else "the local model is busy"
        )
        return f"no capacity for model {model!r} after {waited:.1f}s: {tried}; {local}"

    async def _continue(
        self, kind: Kind, model: str, body_bytes: bytes, body: dict[str, Any], progress: Progress
    ) -> AsyncGenerator[ServeEvent, None]:
        """After text was delivered and its executor failed: continue elsewhere, or fail clearly."""
        for _ in range(self.params.offer_fanout + 1):
            self.counters.failovers += 1
            candidates = self._candidate_entries(model, body, progress.excluded)
            attempts: list[Attempt] = []
            async with aclosing(self._offer_round(candidates, kind, model, body, body_bytes, progress, attempts)) as sub:
                async for ev in sub:
                    yield ev
            attempt = attempts[-1] if attempts else Attempt()
            if attempt.outcome == "refused":
                backend = self.backends.get(model)
                if backend is not None and backend.supports_continuation and self.peer_id not in progress.excluded:
                    async with aclosing(self._run_local(model, kind, body, progress, attempt)) as sub:
                        async for ev in sub:
                            yield ev
            if attempt.outcome == "completed":
                assert attempt.completed is not None
                yield attempt.completed
                return
            if attempt.outcome == "refused":
                break
        why = "; ".join(progress.reasons[-5:])
        raise RequestFailed(
            f"the answer broke off after {len(progress.text)} characters and no executor could continue it ({why})"
        )

    async def _run_local(
        self, model: str, kind: Kind, body: dict[str, Any], progress: Progress, attempt: Attempt
    ) -> AsyncGenerator[ServeEvent, None]:
        backend = self.backends[model]
        resumed = bool(progress.delivered)
        self._inflight[model] += 1
        gen = backend.generate(kind, body, continuation=progress.text)
        finished: Finished | None = None
        try:
            async for ev in gen:
                if isinstance(ev, TextDelta):
                    if not ev.text:
                        continue
                    if not attempt.sent_text:
                        yield Started(self.peer_id, local=True, resumed=resumed)
                    attempt.sent_text.append(ev.text)
                    progress.delivered.append(ev.text)
                    yield ev
                else:
                    finished = ev
                    break
        except BackendError as exc:
            progress.reasons.append(f"local backend: {exc}")
            progress.excluded.add(self.peer_id)
            attempt.outcome = "failed" if attempt.sent_text else "refused"
            progress.completion_tokens += len(attempt.sent_text)
            return
        finally:
            self._inflight[model] -= 1
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()
        if finished is None:
            progress.reasons.append("local backend ended without finishing")
            progress.excluded.add(self.peer_id)
            attempt.outcome = "failed" if attempt.sent_text else "refused"
            progress.completion_tokens += len(attempt.sent_text)
            return
        if not attempt.sent_text:
            yield Started(self.peer_id, local=True, resumed=resumed)
        progress.completion_tokens += finished.completion_tokens
        self.counters.local += 1
        attempt.outcome = "completed"
        attempt.completed = Completed(
            finished.finish_reason,
            finished.prompt_tokens,
            progress.completion_tokens,
            self.peer_id,
            local=True,
            receipt=None,
            receipts=tuple(progress.receipts),
        )
