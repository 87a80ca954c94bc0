"""Serving requests: run locally, or forward over ``/p2pserve/infer/1`` with fail-over.

This service owns both sides of the infer protocol and the node's own request queue.

Protocol (messages in :mod:`p2pserve.wire.messages`), per offer::

    requester → executor   InferRequest   signed by the requester, fresh 16-byte request_id
    executor  → requester  Accept | Reject(reason)
    executor  → requester  Chunk(0), Chunk(1), ...
    executor  → requester  Done(finish_reason, Receipt) | Failure(code, message, partial Receipt?)

A stream is a *session*: after an offer's last message (Reject, Done, Failure) the requester
may send the next offer on the same stream (a new stream costs a multistream-select
negotiation, ~3 ms of the ~5 ms the whole offload used to add). The requester keeps such
idle streams per executor (``Deadlines.pool_idle_s``, newest first) and closes any stream
whose exchange did not end cleanly, so abandoning an executor still means closing its
stream. A reused stream that ends before any reply is stale (the executor ended the idle
session, or the connection died): it and its idle siblings are dropped and the offer is
sent once more on a new stream, with a new request_id; that is not a fail-over. Chunks the
executor produced while a write was in flight go out in one write, and chunks that arrived
together become one TextDelta.

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

The executor's guarantees: it only runs requests signed for it, on its network, not seen
before and created within ``replay_window_s`` of its clock, for a model it serves, at a
price at or above its own, when its policy accepts; it signs a receipt for exactly the text
it sent (a partial one if its backend fails after sending text).

Every loop runs in the nursery of :meth:`ServeService.run`; requests run in the task of
whoever iterates :meth:`ServeService.submit`, as an async generator closed by its context
manager (no task and no channel hop per event: the generators in the request path never
yield inside a cancel scope or a nursery). Nothing is fire-and-forget.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from p2pserve.backends.base import Backend, Finished, Kind, Load, TextDelta
from p2pserve.crypto import Signer, sha256
from p2pserve.errors import (
    BackendError,
    BadRequest,
    ConnectionBroken,
    NoCapacity,
    P2PServeError,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
    RequestFailed,
    StreamClosed,
    TransportError,
    UnknownModel,
)
from p2pserve.framed import FramedStream
from p2pserve.peers import PeerEntry, PeerTable
from p2pserve.policies import (
    LocalModel,
    OfferContext,
    Offload,
    Policy,
    PolicyParams,
    Queue,
    RequestContext,
    RunLocal,
    Wait,
)
from p2pserve.routing import choose_candidates
from p2pserve.transport import Stream, Transport
from p2pserve.wire.limits import DEFAULT_LIMITS
from p2pserve.wire.messages import (
    REQUEST_ID_SIZE,
    Accept,
    Chunk,
    Done,
    Failure,
    InferRequest,
    ModelStatus,
    Receipt,
    Reject,
)

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

INFER_PROTOCOL = "/p2pserve/infer/1"


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Bounds on every step of the infer protocol, in seconds of trio's clock."""

    connect_s: float = 5.0
    """Opening a stream to an executor."""
    accept_s: float = 2.0
    """From sending an offer to its Accept/Reject (WWW.Serve's 2 s probe timeout)."""
    first_token_s: float = 60.0
    """From Accept to the first chunk (prefill of a long prompt on a busy backend)."""
    idle_s: float = 30.0
    """Between two chunks, and from the last chunk to Done."""
    send_s: float = 10.0
    """Writing one message to a peer."""
    request_s: float = 300.0
    """Overall bound on receiving one remote answer (``server_params.request_timeout``)."""
    replay_window_s: float = 120.0
    """An executor refuses offers created further than this from its wall clock."""
    session_idle_s: float = 60.0
    """An executor ends an offer session (stream) that carried no new offer for this long."""
    pool_idle_s: float = 30.0
    """A requester reuses an idle session stream only this long (below ``session_idle_s``)."""


# --- events a request produces ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """An executor began answering (sent before its first text). ``resumed``: it continues
    text another executor delivered before failing; a request has one Started per executor."""

    executor: str
    local: bool
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class Completed:
    """The answer is complete; always the last event.

    ``completion_tokens`` sums every executor's tokens (a vanished executor's are counted as
    the chunks it sent). ``receipt`` is the last executor's verified receipt (None when it
    ran locally or its receipt did not verify); ``receipts`` holds every verified receipt
    of this request, partial ones included, in order.
    """

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    executor: str
    local: bool
    receipt: Receipt | None = None
    receipts: tuple[Receipt, ...] = ()


ServeEvent = Started | TextDelta | Completed


@dataclass(slots=True)
class ServeCounters:
    """Counters for status and metrics (monotonic, since start)."""

    requests: int = 0
    """Our own users' requests submitted."""
    local: int = 0
    """Our own requests answered by a local model."""
    offloaded: int = 0
    """Our own requests answered (at least in part) by a peer."""
    served_for_peers: int = 0
    """Peers' requests we completed."""
    offers_rejected: int = 0
    """Peers' offers we refused (busy, replayed, wrong network, ...)."""
    failovers: int = 0
    """Times one of our requests moved to another executor."""
    failures: int = 0
    """Our own requests that ended in an error."""
    bad_receipts: int = 0
    """Receipts that did not verify (not paid)."""


# --- pure helpers ---------------------------------------------------------------------------


def price_for(completion_tokens: int, price_per_1k: int) -> int:
    """Micro-credits owed for ``completion_tokens`` at ``price_per_1k``: rounded up."""
    return -(-completion_tokens * price_per_1k // 1000)


def check_receipt(
    receipt: Receipt,
    request: InferRequest,
    text: str,
    *,
    partial: bool,
) -> None:
    """Raise RemoteProtocolError (BadSignature for a bad signature) unless ``receipt`` is the
    executor's valid receipt for ``request`` and exactly ``text``, at no more than the price
    ``request`` allowed."""
    receipt.verify()
    problems = []
    if receipt.executor != request.executor:
        problems.append("executor")
    if receipt.requester != request.requester:
        problems.append("requester")
    if receipt.request_id != request.request_id or receipt.network_id != request.network_id:
        problems.append("request id or network")
    if receipt.model != request.model:
        problems.append("model")
    if receipt.request_hash != request.digest():
        problems.append("request hash")
    if receipt.response_hash != sha256(text.encode()):
        problems.append("response hash")
    if receipt.partial != partial:
        problems.append("partial flag")
    if receipt.price > price_for(receipt.completion_tokens, request.max_price_per_1k):
        problems.append("price")
    if problems:
        raise RemoteProtocolError(f"receipt from {receipt.executor} does not match: {', '.join(problems)}")


class ReplayGuard:
    """Bounded memory of offers seen, so none is executed twice. Pure; time is an argument.

    An offer is fresh when its ``created_ms`` lies within ``window_ms`` of ``now_ms`` and its
    (requester, request_id) was not seen. Entries are forgotten once their ``created_ms``
    leaves the window, since the window check refuses them from then on. When
    ``max_entries`` offers are inside the window, new offers are refused ("busy") rather
    than forgetting one early.
    """

    def __init__(self, window_ms: int, max_entries: int = 65_536) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: set[tuple[str, bytes]] = set()
        self._by_age: list[tuple[int, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, requester: str, request_id: bytes, created_ms: int, now_ms: int) -> str | None:
        """None and remember the offer if it is fresh, else the reject reason."""
        while self._by_age and self._by_age[0][0] < now_ms - self.window_ms:
            _, r, i = heapq.heappop(self._by_age)
            self._seen.discard((r, i))
        if abs(now_ms - created_ms) > self.window_ms:
            return "stale"
        key = (requester, request_id)
        if key in self._seen:
            return "replay"
        if len(self._seen) >= self.max_entries:
            return "busy"
        self._seen.add(key)
        heapq.heappush(self._by_age, (created_ms, requester, request_id))
        return None


class DispatchSettings(Protocol):
    """Per-model dispatch settings (``policies.DispatchParams`` or the config's equivalent)."""

    @property
    def target_token_usage(self) -> float: ...

    @property
    def max_concurrency(self) -> int | None: ...


# --- per-request bookkeeping ----------------------------------------------------------------


@dataclass(slots=True)
class _Progress:
    """What one user request has received so far, across executors."""

    delivered: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    receipts: list[Receipt] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    """Peers that failed this request (stalled, vanished, broke the protocol): never again."""
    reasons: list[str] = field(default_factory=list)
    """Why each executor refused or failed, for the final error message."""

    @property
    def text(self) -> str:
        return "".join(self.delivered)


@dataclass(slots=True)
class _Attempt:
    """One executor's try. ``outcome``: "completed", "refused" (nothing delivered), "failed"
    (text delivered, then it broke)."""

    outcome: str = "refused"
    sent_text: list[str] = field(default_factory=list)
    completed: Completed | None = None


@dataclass(slots=True)
class _Session:
    """State of one executor-side offer session (one stream, offers one after another)."""

    busy: bool = False
    """An offer was received and its final message not yet queued."""
    gone: bool = False
    """The requester ended the stream (or it broke): no more offers, stop the running one."""
    running: trio.CancelScope | None = None
    """The running request's scope, cancelled when the requester goes."""


class _Outbox:
    """Messages one task queues and :meth:`run` writes: everything queued while a write is
    in flight goes out together in the next one (one muxer frame, one encryption, one
    syscall for a burst of chunks, with no added delay). A failed or timed-out write is
    kept in ``error`` and cancels ``scope``; later messages are dropped."""

    MAX_QUEUED = 1 << 20
    """Bytes queued before ``put`` waits for the writer."""

    def __init__(self, fs: FramedStream, send_s: float) -> None:
        self.fs = fs
        self.send_s = send_s
        self.error: TransportError | None = None
        self._frames: list[bytes] = []
        self._queued = 0
        self._writing = False
        self._wake = trio.Event()
        self._drained = trio.Event()

    async def put(self, msg: Any) -> None:
        """Queue ``msg``; waits only while over ``MAX_QUEUED`` bytes are queued."""
        if self.error is not None:
            return
        frame = self.fs.frame(msg)
        self._frames.append(frame)
        self._queued += len(frame)
        self._wake.set()
        if self._queued > self.MAX_QUEUED:
            await self.flush()

    async def flush(self) -> None:
        """Wait until everything queued was written (or the writer failed)."""
        while (self._frames or self._writing) and self.error is None:
            self._drained = trio.Event()
            await self._drained.wait()

    async def run(self, scope: trio.CancelScope) -> None:
        """The writer; runs until cancelled."""
        while True:
            while not self._frames:
                self._drained.set()
                self._wake = trio.Event()
                await self._wake.wait()
            data = b"".join(self._frames)
            self._frames.clear()
            self._queued = 0
            self._writing = True
            try:
                await self.fs.send_frames(data, timeout=self.send_s)
            except TransportError as exc:
                self.error = exc
                self._drained.set()
                scope.cancel()
                return
            finally:
                self._writing = False


class ServeService:
    """Request forwarding and local execution for one node. Start with ``nursery.start(run)``.

    ``backends`` maps model name → backend (empty for a gateway). ``dispatch`` and
    ``prices`` (micro-credits per 1k output tokens, default 0) are per model.
    ``on_receipt`` is awaited with every verified receipt (the ledger pays it; errors it
    raises are logged, never shown to the user). ``can_afford(micro_credits)`` filters
    candidates the node could not pay. ``stake_of`` is a peer's stake for PoS (the node
    passes its ledger's view; default: the stake the peer claims). ``wall_clock`` (seconds) stamps offers and checks
    their age; everything else uses trio's clock.
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
        can_afford: Callable[[int], bool] | None = None,
        stake_of: Callable[[PeerEntry], int] | None = None,
        wall_clock: Callable[[], float] = time.time,
        load_interval: float = 1.0,
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
        self.can_afford = can_afford
        self.stake_of: Callable[[PeerEntry], int] = stake_of or (lambda e: e.status.stake)
        self.wall_clock = wall_clock
        self.load_interval = load_interval
        self.counters = ServeCounters()
        self.replay = ReplayGuard(int(deadlines.replay_window_s * 1000))
        self._loads: dict[str, Load] = {m: Load() for m in self.backends}
        self._inflight: Counter[str] = Counter()
        """Requests running on each local model, ours and peers'."""
        self._waiting: Counter[str] = Counter()
        """Our own users' requests per model not yet placed on an executor (our backlog)."""
        self._idle: dict[str, list[tuple[float, FramedStream]]] = {}
        """Per executor, session streams whose last request ended cleanly: (since, stream),
        reused newest first (a new stream costs a multistream negotiation)."""

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve peers' offers and keep local loads fresh until cancelled."""
        self.transport.set_handler(INFER_PROTOCOL, self._handle_offer)
        try:
            async with trio.open_nursery() as nursery:
                await self._refresh_loads()
                nursery.start_soon(self._load_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._close_idle(math.inf)

    async def _load_loop(self) -> None:
        while True:
            await trio.sleep(self.load_interval)
            await self._refresh_loads()
            await self._close_idle(self.deadlines.pool_idle_s)

    # --- session streams to executors -----------------------------------------------------

    MAX_IDLE_PER_PEER = 64
    """Idle session streams kept per executor (yamux allows 256 streams per connection)."""

    async def _checkout(self, peer: str) -> tuple[FramedStream, bool]:
        """A session stream to ``peer``: an idle one if fresh enough, else a new one.
        ``(stream, reused)``; raises PeerTimeout or DialError when none can be opened."""
        idle = self._idle.get(peer)
        now = trio.current_time()
        while idle:
            since, fs = idle.pop()
            if now - since < self.deadlines.pool_idle_s:
                return fs, True
            with trio.CancelScope(shield=True):
                await fs.aclose()
        d = self.deadlines
        stream: Stream | None = None
        with trio.move_on_after(d.connect_s):
            stream = await self.transport.open_stream(peer, INFER_PROTOCOL)
        if stream is None:
            raise PeerTimeout(f"could not open a stream within {d.connect_s}s")
        return FramedStream(stream), False

    async def _checkin(self, peer: str, fs: FramedStream) -> None:
        """Keep ``fs`` (its last request ended cleanly, nothing unread) for the next request to ``peer``."""
        idle = self._idle.setdefault(peer, [])
        if fs.buffered or len(idle) >= self.MAX_IDLE_PER_PEER:
            with trio.CancelScope(shield=True):
                await fs.aclose()
            return
        idle.append((trio.current_time(), fs))

    async def _close_idle(self, older_than: float, peer: str | None = None) -> None:
        """Close idle session streams older than ``older_than`` seconds (of ``peer``, or all)."""
        now = trio.current_time()
        for p in [peer] if peer is not None else list(self._idle):
            idle = self._idle.get(p, [])
            keep = [(t, fs) for t, fs in idle if now - t < older_than]
            drop = [fs for t, fs in idle if now - t >= older_than]
            if keep:
                self._idle[p] = keep
            else:
                self._idle.pop(p, None)
            for fs in drop:
                await fs.aclose()

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
        progress = _Progress()
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
                attempt = _Attempt()
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
                    order = self._choose(candidates)
                    for peer in order:
                        attempt = _Attempt()
                        async with aclosing(self._run_remote(peer, kind, model, body_bytes, progress, attempt)) as sub:
                            async for ev in sub:
                                yield ev
                        if attempt.outcome != "refused":
                            break
                        self.counters.failovers += 1
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

    def _choose(self, candidates: list[PeerEntry]) -> list[str]:
        """The peers to offer a request to, in PoS order."""
        return choose_candidates(
            candidates, self.rng, self.params.offer_fanout, self.params.newcomer_share, stake_of=self.stake_of
        )

    def _candidate_entries(self, model: str, body: dict[str, Any], exclude: set[str]) -> list[Any]:
        entries = self.peers.candidates(model, exclude=exclude)
        if self.can_afford is None:
            return entries
        max_tokens = body.get("max_tokens")
        out = []
        for e in entries:
            m = e.model(model)
            assert m is not None
            tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else m.context_length
            if self.can_afford(price_for(tokens, m.price_per_1k)):
                out.append(e)
        return out

    def _no_capacity_message(self, model: str, progress: _Progress, waited: float, local_failed: bool) -> str:
        tried = "; ".join(progress.reasons[-5:]) or "no peer serving it was accepting work"
        local = "the local backend failed" if local_failed else (
            "no local model serves it" if model not in self.backends else "the local model is busy"
        )
        return f"no capacity for model {model!r} after {waited:.1f}s: {tried}; {local}"

    async def _continue(
        self, kind: Kind, model: str, body_bytes: bytes, body: dict[str, Any], progress: _Progress
    ) -> AsyncGenerator[ServeEvent, None]:
        """After text was delivered and its executor failed: continue elsewhere, or fail clearly."""
        for _ in range(self.params.offer_fanout + 1):
            self.counters.failovers += 1
            candidates = self._candidate_entries(model, body, progress.excluded)
            attempt = _Attempt()
            if candidates:
                order = self._choose(candidates)
                for peer in order:
                    attempt = _Attempt()
                    async with aclosing(self._run_remote(peer, kind, model, body_bytes, progress, attempt)) as sub:
                        async for ev in sub:
                            yield ev
                    if attempt.outcome != "refused":
                        break
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
        self, model: str, kind: Kind, body: dict[str, Any], progress: _Progress, attempt: _Attempt
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

    async def _run_remote(
        self, peer: str, kind: Kind, model: str, body_bytes: bytes, progress: _Progress, attempt: _Attempt
    ) -> AsyncGenerator[ServeEvent, None]:
        """Offer the request to ``peer`` and relay its answer. Sets ``attempt.outcome``."""
        entry = self.peers.get(peer)
        advertised = entry.model(model) if entry is not None else None
        if advertised is None:
            progress.reasons.append(f"{peer[-8:]}: gone")
            return
        d = self.deadlines
        hard_deadline = trio.current_time() + d.request_s
        fs: FramedStream | None = None
        reusable = False
        chunks_seen = 0
        try:
            while True:
                fs, reused = await self._checkout(peer)
                request = InferRequest(
                    request_id=self.rng.randbytes(REQUEST_ID_SIZE),
                    network_id=self.network_id,
                    requester=self.peer_id,
                    executor=peer,
                    model=model,
                    kind=kind,
                    body=body_bytes,
                    created_ms=int(self.wall_clock() * 1000),
                    continuation=progress.text,
                    max_price_per_1k=advertised.price_per_1k,
                    signature=b"",
                ).signed(self.signer)
                try:
                    await fs.send(request, timeout=d.send_s)
                    reply = await fs.recv((Accept, Reject), timeout=d.accept_s)
                except (ConnectionBroken, StreamClosed):
                    if not reused:
                        raise
                    # the executor ended this idle session (or its connection died): the
                    # other idle ones are as stale; retry once on a new stream (new request id)
                    with trio.CancelScope(shield=True):
                        await fs.aclose()
                        await self._close_idle(0.0, peer)
                    fs = None
                    continue
                break
            if isinstance(reply, Reject):
                reusable = True
                progress.reasons.append(f"{peer[-8:]}: rejected ({reply.reason})")
                if reply.reason not in ("busy", "no-continuation"):
                    progress.excluded.add(peer)
                return
            if reply.request_id != request.request_id:
                raise RemoteProtocolError("Accept for another request")
            timeout = d.first_token_s
            while True:
                remaining = hard_deadline - trio.current_time()
                msg: Chunk | Done | Failure | None
                msg = await fs.recv((Chunk, Done, Failure), timeout=max(0.0, min(timeout, remaining)))
                # chunks that arrived together leave as one TextDelta (one SSE event, one task switch)
                texts: list[str] = []
                while isinstance(msg, Chunk):
                    if msg.index != chunks_seen:
                        raise RemoteProtocolError(f"chunk {msg.index} out of order (expected {chunks_seen})")
                    chunks_seen += 1
                    timeout = d.idle_s
                    if msg.text:
                        texts.append(msg.text)
                    msg = fs.recv_buffered((Chunk, Done, Failure))
                if not isinstance(msg, Chunk | None):
                    reusable = True  # the executor's last message: the session may carry another offer
                if texts:
                    if not attempt.sent_text:
                        yield Started(peer, local=False, resumed=bool(progress.delivered))
                    attempt.sent_text.extend(texts)
                    progress.delivered.extend(texts)
                    yield TextDelta("".join(texts))
                if msg is None:
                    continue
                if isinstance(msg, Done):
                    receipt = await self._accept_receipt(msg.receipt, request, attempt, partial=False)
                    if not attempt.sent_text:
                        yield Started(peer, local=False, resumed=bool(progress.delivered))
                    progress.completion_tokens += (
                        receipt.completion_tokens if receipt is not None else msg.receipt.completion_tokens
                    )
                    if receipt is not None:
                        progress.receipts.append(receipt)
                    self.counters.offloaded += 1
                    attempt.outcome = "completed"
                    attempt.completed = Completed(
                        msg.finish_reason,
                        msg.receipt.prompt_tokens,
                        progress.completion_tokens,
                        peer,
                        local=False,
                        receipt=receipt,
                        receipts=tuple(progress.receipts),
                    )
                    return
                else:
                    if msg.receipt is not None and attempt.sent_text:
                        receipt = await self._accept_receipt(msg.receipt, request, attempt, partial=True)
                        if receipt is not None:
                            progress.receipts.append(receipt)
                            progress.completion_tokens += receipt.completion_tokens
                        else:
                            progress.completion_tokens += len(attempt.sent_text)
                    elif attempt.sent_text:
                        progress.completion_tokens += len(attempt.sent_text)
                    progress.reasons.append(f"{peer[-8:]}: failed ({msg.code}: {msg.message})")
                    progress.excluded.add(peer)
                    attempt.outcome = "failed" if attempt.sent_text else "refused"
                    return
        except (TransportError, ProtocolError) as exc:
            progress.reasons.append(f"{peer[-8:]}: {type(exc).__name__} ({exc})")
            progress.excluded.add(peer)
            if attempt.sent_text:
                progress.completion_tokens += len(attempt.sent_text)
            attempt.outcome = "failed" if attempt.sent_text else "refused"
        finally:
            if fs is not None:
                with trio.CancelScope(shield=True):
                    if reusable:
                        await self._checkin(peer, fs)
                    else:
                        await fs.aclose()

    async def _accept_receipt(
        self, receipt: Receipt, request: InferRequest, attempt: _Attempt, *, partial: bool
    ) -> Receipt | None:
        """The receipt if it verifies (then ``on_receipt`` pays it), else None."""
        try:
            check_receipt(receipt, request, "".join(attempt.sent_text), partial=partial)
        except RemoteProtocolError as exc:
            self.counters.bad_receipts += 1
            log.warning("unpaid: %s", exc)
            return None
        if self.on_receipt is not None:
            try:
                await self.on_receipt(receipt)
            except P2PServeError as exc:
                log.warning("paying receipt %s failed: %s", receipt.request_id.hex(), exc)
        return receipt

    # --- executor -------------------------------------------------------------------------

    def _check_offer(self, req: InferRequest) -> str | None:
        """The reject reason for an offer, or None to consider it (pure but for the clock)."""
        if req.network_id != self.network_id:
            return "wrong-network"
        if req.executor != self.peer_id:
            return "wrong-executor"
        try:
            req.verify()
        except ProtocolError:
            return "bad-signature"
        backend = self.backends.get(req.model)
        if backend is None:
            return "unknown-model"
        if req.max_price_per_1k < self.prices.get(req.model, 0):
            return "price"
        if req.continuation and not backend.supports_continuation:
            return "no-continuation"
        return self.replay.check(req.requester, req.request_id, req.created_ms, int(self.wall_clock() * 1000))

    async def _handle_offer(self, stream: Stream) -> None:
        """Executor side of ``/p2pserve/infer/1``: a session of offers, one after another.

        The requester sends its next InferRequest only after the previous one's final
        message (Reject, Done or Failure); an offer while a request runs is a protocol
        error and ends the session. An end of stream (or a reset) while a request runs
        means the requester left: generation stops at once. The session ends quietly at an
        end of stream between requests, or when no offer comes within ``accept_s`` (the
        first) or ``session_idle_s`` (later ones)."""
        fs = FramedStream(stream)
        d = self.deadlines
        session = _Session()
        send_offer, offers = trio.open_memory_channel[InferRequest](1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_offers, fs, session, send_offer)
                timeout = d.accept_s
                while True:
                    req: InferRequest | None = None
                    with trio.move_on_after(timeout):
                        try:
                            req = await offers.receive()
                        except trio.EndOfChannel:
                            pass
                    if req is None or not await self._serve_offer(fs, session, req):
                        break
                    timeout = d.session_idle_s
                nursery.cancel_scope.cancel()
        except* (TransportError, ProtocolError) as group:
            log.debug("offer session from %s failed: %s", fs.remote_peer, group.exceptions)
        finally:
            with trio.CancelScope(shield=True):
                await fs.aclose()

    @staticmethod
    async def _read_offers(fs: FramedStream, session: _Session, out: trio.MemorySendChannel[InferRequest]) -> None:
        """The session's only reader: passes offers on; an end of stream, a broken stream or
        an offer while one runs cancels the running request and ends the session."""
        async with out:
            try:
                while True:
                    msg = await fs.recv_or_eof(InferRequest)
                    if msg is None:
                        break
                    if session.busy:
                        raise RemoteProtocolError("an offer arrived while a request was running")
                    session.busy = True
                    await out.send(msg)
            except (TransportError, ProtocolError) as exc:
                log.debug("offer session from %s ended: %s", fs.remote_peer, exc)
            finally:
                session.gone = True
                if session.running is not None:
                    session.running.cancel()

    async def _serve_offer(self, fs: FramedStream, session: _Session, req: InferRequest) -> bool:
        """Answer one offer on a session; True when the session may carry another."""
        d = self.deadlines
        reason = self._check_offer(req)
        body: Any = None
        if reason is None:
            try:
                body = json.loads(req.body)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                reason = "bad-body"
        if reason is None:
            await self._read_load(req.model)
            offer = OfferContext(req.model, req.requester, bool(req.continuation))
            if not self.policy.accept(offer, [self._local_model(req.model)], self.backlog(), self.rng):
                reason = "busy"
        if reason is not None:
            self.counters.offers_rejected += 1
            session.busy = False
            try:
                await fs.send(Reject(req.request_id, reason), timeout=d.send_s)
            except TransportError as exc:
                log.debug("reject to %s not sent: %s", fs.remote_peer, exc)
                return False
            return True
        return await self._execute(fs, session, req, body)

    async def _execute(self, fs: FramedStream, session: _Session, req: InferRequest, body: dict[str, Any]) -> bool:
        """Accept, run and answer ``req``; True when its final message went out."""
        backend = self.backends[req.model]
        outbox = _Outbox(fs, self.deadlines.send_s)
        sent: list[str] = []
        self._inflight[req.model] += 1
        gen = backend.generate(req.kind, body, continuation=req.continuation)  # type: ignore[arg-type]
        try:
            with trio.CancelScope() as scope:
                session.running = scope
                if session.gone:
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(outbox.run, scope)
                    await outbox.put(Accept(req.request_id))
                    await self._generate(outbox, session, req, gen, sent)
                    await outbox.flush()
                    nursery.cancel_scope.cancel()
        finally:
            session.running = None
            self._inflight[req.model] -= 1
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
        return not scope.cancelled_caught and outbox.error is None and not session.gone

    async def _generate(
        self, outbox: _Outbox, session: _Session, req: InferRequest, gen: AsyncIterator[Any], sent: list[str]
    ) -> None:
        """Queue the answer's chunks and its final message (Done, or Failure on a backend error)."""
        index = 0
        try:
            async for ev in gen:
                if isinstance(ev, Finished):
                    receipt = self._receipt(req, "".join(sent), ev.prompt_tokens, ev.completion_tokens, False)
                    session.busy = False
                    await outbox.put(Done(ev.finish_reason, receipt))
                    self.counters.served_for_peers += 1
                    return
                text = ev.text
                limit = DEFAULT_LIMITS.max_text_chunk
                for start in range(0, len(text), limit):
                    piece = text[start : start + limit]
                    await outbox.put(Chunk(index, piece))
                    sent.append(piece)
                    index += 1
            raise BackendError("backend ended without a Finished event")
        except BackendError as exc:
            receipt = self._receipt(req, "".join(sent), 0, len(sent), True) if sent else None
            session.busy = False
            await outbox.put(Failure("backend-error", str(exc)[:4000], receipt))

    def _receipt(self, req: InferRequest, text: str, prompt_tokens: int, completion_tokens: int, partial: bool) -> Receipt:
        return Receipt(
            request_id=req.request_id,
            network_id=req.network_id,
            requester=req.requester,
            executor=self.peer_id,
            model=req.model,
            request_hash=req.digest(),
            response_hash=sha256(text.encode()),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            price=price_for(completion_tokens, self.prices.get(req.model, 0)),
            partial=partial,
            timestamp_ms=int(self.wall_clock() * 1000),
            signature=b"",
        ).signed(self.signer)

