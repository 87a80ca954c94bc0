"""Serving requests: the node's facade over its local models, the requester side and the
executor side of ``/p2pserve/infer/1``.

This module owns :class:`ServeService`. It is a thin async shell: *where* a request runs
next is the pure :class:`~p2pserve.serving.dispatch.RequestLifecycle`; *which* peers a
round offers it to is the :class:`~p2pserve.serving.router.Router` (default: stake order,
offenders last); one try on a peer is :class:`~p2pserve.serving.client.InferClient`
driving the pure :class:`~p2pserve.serving.offer.OfferSession`; peers' offers are answered
by :class:`~p2pserve.serving.executor.InferExecutor`; the local models are
:class:`~p2pserve.serving.local.LocalModels`. A :class:`~p2pserve.serving.tracer.Tracer`
watches every request (the simulator measures through it).

The requester's guarantees:

* **an answer or a clear error, never a hang**: every wait is bounded; a request that finds
  no executor within ``PolicyParams.max_wait_s`` fails with NoCapacity (HTTP 503);
* **before the first token**, a rejecting, stalled, vanished or misbehaving executor means
  the next candidate, then (policy permitting) a local model;
* **after tokens were delivered**, the answer continues on another executor (or locally)
  from the text already delivered, when that executor's backend supports continuation;
  otherwise it ends with :class:`~p2pserve.errors.RequestFailed`;
* **never two answers**: one executor streams at a time; an abandoned executor's stream is
  closed unread, so its late reply is dropped;
* **same seed, same result**: every random draw of a request (routing, request IDs, the
  policy's coin flips) comes from a stream derived from the service's seed and the
  request's ``key``, so concurrent requests do not disturb each other's draws.

Requests run in the task of whoever iterates :meth:`ServeService.submit`, as an async
generator closed by its context manager (no task and no channel hop per event: the
generators in the request path never yield inside a cancel scope or a nursery). Every loop
runs in the nursery of :meth:`ServeService.run`. Nothing is fire-and-forget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any

import trio

from p2pserve.backends.base import Backend, Kind, TextDelta
from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.crypto import Signer
from p2pserve.errors import (
    AccountNotOpen,
    BadRequest,
    InsufficientCredit,
    NoCapacity,
    RequestFailed,
    TransportError,
    UnknownModel,
)
from p2pserve.membership.table import PeerEntry, PeerTable
from p2pserve.net.framed import FramedStream
from p2pserve.policies import Policy, PolicyParams
from p2pserve.rng import derive
from p2pserve.serving.client import InferClient
from p2pserve.serving.dispatch import Fail, Offer, Phase, RequestLifecycle, Sleep, UseLocal, Where
from p2pserve.serving.events import (
    AccountStatus,
    Attempt,
    Completed,
    Deadlines,
    DispatchSettings,
    Outcome,
    Progress,
    ServeCounters,
    ServeEvent,
    Started,
    Wallet,
)
from p2pserve.serving.executor import InferExecutor
from p2pserve.serving.local import LocalModels
from p2pserve.serving.offenders import Offence, OffenderBook
from p2pserve.serving.receipts import Bounds, ReplayGuard, price_for
from p2pserve.serving.replay_log import ReplayLog
from p2pserve.serving.router import PosRouter, Router
from p2pserve.serving.tracer import NULL_TRACER, Tracer
from p2pserve.transport import Transport
from p2pserve.units import format_credits
from p2pserve.wire.gossip import ModelStatus
from p2pserve.wire.infer import INFER_PROTOCOL, Receipt
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "Completed",
    "Deadlines",
    "ServeCounters",
    "ServeEvent",
    "ServeService",
    "Started",
    "TextDelta",
]

log = logging.getLogger(__name__)


_MAX_AUTO_KEYS = 65_536
"""Distinct request bodies whose repeat counts a service remembers for their automatic keys
(then it starts over: one entry per body would otherwise grow without bound)."""


class ServeService:
    """Request forwarding and local execution for one node. Start with ``nursery.start(run)``.

    ``backends`` maps model name → backend (empty for a gateway); ``dispatch`` and ``prices``
    (micro-credits per 1k output tokens, default 0) are per model. ``rng`` seeds the
    service's streams (see the module docstring). ``wallet`` (the node's ledger) holds each
    offer's worst-case price before it is sent, pays receipts through the hold and decides
    which peers' offers this node may take (no wallet: everything is free, as in unit
    tests). ``on_receipt`` observes every verified receipt. ``stake_of`` is a peer's stake
    for the default router (the node passes its ledger's view). ``router`` and ``tracer``
    are the seams (defaults: :class:`PosRouter`, no tracing). ``clock`` stamps offers.
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
        router: Router | None = None,
        tracer: Tracer | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if transport.peer_id != signer.peer_id:
            raise ValueError("transport and signer disagree on the peer id")
        self.transport = transport
        self.signer = signer
        self.network_id = network_id
        self.peers = peers
        self.local = LocalModels(backends, dispatch=dispatch, prices=prices)
        self.policy = policy
        self.params = params
        self.seed = rng.getrandbits(64)
        self.deadlines = deadlines
        self.wallet = wallet
        self.offenders = offenders if offenders is not None else OffenderBook()
        self.stake_of: Callable[[PeerEntry], int] = stake_of or (lambda e: e.status.stake)
        self.router: Router = router or PosRouter(self.stake_of, self.offenders, params.newcomer_share)
        self.tracer: Tracer = tracer if tracer is not None else NULL_TRACER
        self.clock = clock
        self.load_interval = load_interval
        self.limits = limits
        self.counters = ServeCounters()
        self._keys: Counter[str] = Counter()
        self._client = InferClient(
            transport, signer, network_id, peers,
            deadlines=deadlines, counters=self.counters, on_receipt=on_receipt, clock=clock,
            wallet=wallet, offenders=self.offenders, limits=limits,
        )
        self._executor = InferExecutor(
            signer, network_id, self.local, policy, self.seed,
            deadlines=deadlines, counters=self.counters, clock=clock, wallet=wallet, replay_log=replay_log,
            limits=limits,
        )
        self.replay: ReplayGuard = self._executor.replay
        self._client.pool.on_open = self._opened
        self.on_completed: Callable[[Kind, str, dict[str, Any], str, Completed, str], None] | None = None
        """Hears of every completed user request, with its whole text (synchronous, must not
        block or raise): the duel coordinator samples offloaded ones."""

    @property
    def on_receipt_issued(self) -> Callable[[Receipt, float, float], None] | None:
        """Hears of every receipt this node signs for a peer's request, free or priced, with
        when the offer was accepted and now (see :attr:`InferExecutor.on_receipt_issued`)."""
        return self._executor.on_receipt_issued

    @on_receipt_issued.setter
    def on_receipt_issued(self, hook: Callable[[Receipt, float, float], None] | None) -> None:
        self._executor.on_receipt_issued = hook

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    def use_policy(self, policy: Policy, router: Router | None = None) -> None:
        """Decide with ``policy`` (requests and offers alike) and, when given, route with
        ``router`` from now on (the simulator's strategies)."""
        self.policy = policy
        self._executor.policy = policy
        if router is not None:
            self.router = router

    @property
    def backends(self) -> dict[str, Backend]:
        return self.local.backends

    @property
    def prices(self) -> dict[str, int]:
        return self.local.prices

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
                await self.local.refresh()
                nursery.start_soon(self._load_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._client.close_idle(math.inf)
            if self._executor.replay_log is not None:
                self._executor.replay_log.close()

    async def _load_loop(self) -> None:
        while True:
            # a gateway has no loads to read: wake only to close idle pooled streams
            await trio.sleep(self.load_interval if self.local.backends else self.deadlines.pool_idle_s / 2)
            await self.local.refresh()
            await self._client.close_idle(self.deadlines.pool_idle_s)

    def _opened(self, peer: str, error: TransportError | None) -> None:
        """A session stream to ``peer`` opened (its connect failures are forgiven) or could
        not be opened within the connect deadline: an advertised executor we cannot reach is
        offered work only after the others for a while (see :class:`OffenderBook`)."""
        if error is None:
            self.offenders.reached(peer)
            return
        now = trio.current_time()
        probation = self.offenders.unreachable(peer, now)
        self._client.offence_lines.record(
            peer, Offence.UNREACHABLE.value, f"unreachable after advertising ({error}); offered work only after the others",
            now, probation_s=probation,
        )

    # --- views ----------------------------------------------------------------------------

    def known_models(self) -> set[str]:
        """Models served locally or by any known peer."""
        return set(self.local.backends) | self.peers.models()

    def backlog(self) -> int:
        """Our own users' requests still waiting for an executor."""
        return self.local.backlog()

    def model_status(self) -> tuple[ModelStatus, ...]:
        """One gossip entry per local model, from the last loads read."""
        return self.local.model_status(self.policy)

    # --- requester ------------------------------------------------------------------------

    def submit(
        self, kind: Kind, model: str, body: dict[str, Any], *, key: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ServeEvent]]:
        """Serve one user request: ``async with serve.submit(...) as events: async for ev in events``.

        Events: per executor a :class:`Started` then its :class:`TextDelta` s; finally one
        :class:`Completed`. Errors (:class:`~p2pserve.errors.ServingError`: UnknownModel,
        BadRequest, NoCapacity, RequestFailed) are raised by the iteration, after the events
        that preceded them, and so leave the ``async with`` block. Leaving the block early
        stops the request and closes its stream (a remote executor is told to stop). The
        request runs in the iterating task. ``key`` names the request for its random draws
        and the tracer (default: its body and how many identical bodies came before).
        """
        return aclosing(self._serve(kind, model, body, key))

    async def _serve(self, kind: Kind, model: str, body: dict[str, Any], key: str | None) -> AsyncGenerator[ServeEvent, None]:
        self.counters.requests += 1
        if kind not in ("chat", "completion"):
            self.counters.failures += 1
            raise BadRequest(f"unknown request kind {kind!r}")
        body_bytes = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        key = key if key is not None else self._auto_key(body_bytes)
        executor: str | None = None
        self.tracer.request_started(key, model, trio.current_time())
        try:
            text: list[str] = []
            async with aclosing(self._request(kind, model, body, body_bytes, key)) as events:
                async for ev in events:
                    if isinstance(ev, TextDelta):
                        text.append(ev.text)
                    elif isinstance(ev, Completed):
                        executor = ev.executor
                        if self.on_completed is not None:
                            self.on_completed(kind, model, body, "".join(text), ev, key)
                    yield ev
        except BaseException:
            self.counters.failures += 1
            raise
        finally:
            self.tracer.request_ended(key, executor is not None, executor, trio.current_time())

    async def run_on(
        self, peer: str, kind: Kind, model: str, body: dict[str, Any], body_bytes: bytes, *, key: str
    ) -> tuple[bool, str, Completed | None]:
        """Offer ``body_bytes`` (the exact bytes another executor got) to ``peer`` alone: no
        fail-over, no local run, no user. Whether the executor only declined for now (busy:
        worth offering again later), the answer's text and its :class:`Completed` (when it
        completed). This is an ordinary offer, paid like any (the duel's second executor
        cannot tell it from one)."""
        progress, attempt = Progress(), Attempt()
        text: list[str] = []
        rng = derive(self.seed, "shadow", key, peer, trio.current_time())
        async with aclosing(self._client.run_remote(peer, kind, model, body, body_bytes, progress, attempt, rng)) as events:
            async for ev in events:
                if isinstance(ev, TextDelta):
                    text.append(ev.text)
        if attempt.outcome is not Outcome.COMPLETED:
            log.info("offer to %s alone ended %s: %s", peer, attempt.outcome.value, "; ".join(progress.reasons[-2:]))
        busy = attempt.outcome is Outcome.REFUSED and peer not in progress.excluded
        return busy, "".join(text), attempt.completed

    def _auto_key(self, body_bytes: bytes) -> str:
        digest = hashlib.sha256(body_bytes).hexdigest()[:16]
        if digest not in self._keys and len(self._keys) >= _MAX_AUTO_KEYS:
            self._keys.clear()  # bounded memory; still deterministic (same requests, same keys)
        self._keys[digest] += 1
        return f"{digest}/{self._keys[digest]}"

    async def _request(
        self, kind: Kind, model: str, body: dict[str, Any], body_bytes: bytes, key: str
    ) -> AsyncGenerator[ServeEvent, None]:
        """Drive the lifecycle: ask it where to go next, go there, tell it how it ended."""
        if len(body_bytes) > self.limits.max_prompt:
            raise BadRequest(f"request body of {len(body_bytes)} bytes exceeds {self.limits.max_prompt}")
        if model not in self.known_models():
            raise UnknownModel(f"no node in reach serves model {model!r}")
        rng = derive(self.seed, "request", key)
        backend = self.local.backends.get(model)
        life = RequestLifecycle(
            model, self.policy, self.params, trio.current_time(),
            has_local=backend is not None, local_continues=backend is not None and backend.supports_continuation,
            local_down=model in self.local.down,
        )
        if backend is None or model in self.local.down:
            self._check_affordable(model, body)
        progress = Progress()
        if model in self.local.down:
            progress.reasons.append(f"local backend down: {self.local.down[model]}")
        with self.local.queued(model) as waiting:
            while True:
                now = trio.current_time()
                candidates = self._candidates(model, body, progress.excluded, now)
                local = [self.local.view(model)] if backend is not None else []
                step = life.decide(now, local, bool(candidates), rng)
                if isinstance(step, Sleep):
                    await trio.sleep(step.delay)
                    continue
                if isinstance(step, Fail):
                    raise self._failure(step, model, progress, now - life.started, life.local_failed)
                waiting.placed()
                attempt = Attempt()
                if isinstance(step, UseLocal):
                    where = Where.LOCAL
                    async with aclosing(self._run_local(model, kind, body, progress, attempt, key)) as events:
                        async for ev in events:
                            yield ev
                else:
                    assert isinstance(step, Offer)
                    where = Where.REMOTE
                    if life.phase is Phase.CONTINUING:
                        self.counters.failovers += 1
                    async with aclosing(self._offer_round(candidates, kind, model, body, body_bytes, progress,
                                                          attempt, key, rng)) as events:
                        async for ev in events:
                            yield ev
                phase = life.ended(where, attempt.outcome)
                if phase is Phase.DONE:
                    assert attempt.completed is not None
                    yield attempt.completed
                    return
                if phase is Phase.FAILED:
                    assert life.failure is not None
                    raise self._failure(life.failure, model, progress, trio.current_time() - life.started, life.local_failed)
                if phase is Phase.PLACING:
                    waiting.unplaced()

    def _failure(self, step: Fail, model: str, progress: Progress, waited: float, local_failed: bool) -> Exception:
        why = "; ".join(progress.reasons[-5:])
        if not step.no_capacity:
            return RequestFailed(
                f"the answer broke off after {len(progress.text)} characters and {step.message} ({why})"
            )
        tried = why or "no peer serving it was accepting work"
        local = "the local backend failed" if local_failed else (
            "no local model serves it" if model not in self.local else "the local model is busy"
        )
        return NoCapacity(f"no capacity for model {model!r} after {waited:.1f}s: {tried}; {local}")

    async def _offer_round(
        self, candidates: list[PeerEntry], kind: Kind, model: str, body: dict[str, Any], body_bytes: bytes,
        progress: Progress, attempt: Attempt, key: str, rng: random.Random,
    ) -> AsyncGenerator[ServeEvent, None]:
        """Offer to the routed candidates one after another until one does not refuse;
        ``attempt`` takes the last try's outcome (refused when nobody took it)."""
        for peer in self.router.route(model, candidates, self.params.offer_fanout, trio.current_time(), rng):
            one = Attempt()
            self.tracer.attempt_started(key, peer, False, trio.current_time())
            seen_text = False  # the first delivery may carry several chunks joined
            async with aclosing(self._client.run_remote(peer, kind, model, body, body_bytes, progress, one, rng)) as sub:
                async for ev in sub:
                    if isinstance(ev, TextDelta) and not seen_text:
                        seen_text = True
                        self.tracer.first_text(key, peer, trio.current_time())
                    yield ev
            self.tracer.attempt_ended(key, peer, one.outcome, trio.current_time())
            attempt.outcome, attempt.sent_text, attempt.completed = one.outcome, one.sent_text, one.completed
            if one.outcome is not Outcome.REFUSED:
                return
            self.counters.failovers += 1

    def _candidates(self, model: str, body: dict[str, Any], exclude: set[str], now: float) -> list[PeerEntry]:
        """Peers to consider: alive, accepting, reached (a peer learned from gossip is not
        offered work before the node reached it: see :meth:`PeerTable.routable`), not
        excluded for this request, not cooling off after an offence, and (with a wallet)
        affordable at their worst-case price."""
        peers, offenders = self.peers, self.offenders
        entries = [
            e for e in peers.candidates(model, exclude=exclude)
            if peers.routable(e.peer_id) and not offenders.cooling(e.peer_id, now)
        ]
        if self.wallet is None:
            return entries
        out = []
        available = self.wallet.available()
        worst_by_context: dict[int, int] = {}  # peers mostly share a few context lengths
        for e in entries:
            m = e.model(model)
            assert m is not None
            worst = worst_by_context.get(m.context_length)
            if worst is None:
                worst = worst_by_context[m.context_length] = Bounds.of(body, 0, "", m.context_length).worst_case_tokens()
            if price_for(worst, m.price_per_1k) <= available:
                out.append(e)
        return out

    def _check_affordable(self, model: str, body: dict[str, Any]) -> None:
        """Raise InsufficientCredit, with the numbers, when peers serve ``model`` but even the
        cheapest one's worst case (``max_tokens`` or its context, at its price) is more than
        this node can pay now: waiting would only end in a 503. While the wallet's account
        is not open yet (a node that just joined) that is AccountNotOpen instead (503, worth
        a retry in seconds): the node has no credit *yet*."""
        if self.wallet is None:
            return
        worst = []
        for e in self.peers.candidates(model):
            m = e.model(model)
            assert m is not None
            tokens = Bounds.of(body, 0, "", m.context_length).worst_case_tokens()
            worst.append((price_for(tokens, m.price_per_1k), tokens, m.price_per_1k))
        if not worst:
            return
        price, tokens, per_1k = min(worst)
        available = self.wallet.available()
        if price > available and isinstance(self.wallet, AccountStatus) and not self.wallet.opened:
            raise AccountNotOpen(
                f"this node cannot pay peers for {model!r} yet: its ledger account is not open (it opens once a peer "
                f"has confirmed this node's chain, seconds after joining); retry in a few seconds "
                f"(Retry-After: {AccountNotOpen.retry_after_s})"
            )
        if price > available:
            raise InsufficientCredit(
                f"this request may cost up to {format_credits(price)} credits ({tokens} tokens at "
                f"{format_credits(per_1k)} per 1k, the cheapest peer serving {model!r}) but this node can pay "
                f"{format_credits(available)} now; lower max_tokens, or earn or unstake credit"
            )

    async def _run_local(
        self, model: str, kind: Kind, body: dict[str, Any], progress: Progress, attempt: Attempt, key: str
    ) -> AsyncGenerator[ServeEvent, None]:
        self.tracer.attempt_started(key, self.peer_id, True, trio.current_time())
        seen_text = False
        async with aclosing(self.local.run(model, kind, body, progress, attempt, self.peer_id)) as events:
            async for ev in events:
                if isinstance(ev, TextDelta) and not seen_text:
                    seen_text = True
                    self.tracer.first_text(key, self.peer_id, trio.current_time())
                yield ev
        if attempt.outcome is Outcome.COMPLETED:
            self.counters.local += 1
        self.tracer.attempt_ended(key, self.peer_id, attempt.outcome, trio.current_time())
