"""The executor side of ``/p2pserve/infer/1``: answering peers' offers with local models.

This module owns :class:`InferExecutor` (the protocol handler the serving service installs),
the per-stream offer session and the outbox that writes a burst of chunks in one write.

Per offer, on a session stream (messages in :mod:`p2pserve.wire.infer`)::

    requester → executor   InferRequest   signed by the requester, fresh 16-byte request_id
    executor  → requester  Accept | Reject(reason)
    executor  → requester  Chunk(0), Chunk(1), ...
    requester → executor   Cancel(request_id)        (optional: its user left)
    executor  → requester  Done(finish_reason, Receipt) | Failure(code, message, partial Receipt?)

Guarantees: it only runs requests signed for it, on its network, not seen before (also
across restarts, with a :class:`~p2pserve.serving.replay_log.ReplayLog`) and created within
``replay_window_s`` of its clock, for a model it serves, at a price at or above its own,
from a requester its wallet admits (an opened account whose credit covers the worst case
and that pays what it owes: see ``LedgerService.admit``), when its policy accepts; it signs
a receipt for exactly the text it sent, with token counts clamped to the bounds the
requester checks (:class:`~p2pserve.serving.receipts.Bounds`), and a partial one if its backend
fails or the requester cancels after text was sent; every receipt it signs, free or priced,
is told to :attr:`InferExecutor.on_receipt_issued` (the node's ``request_accepted`` line). A session carries one offer at a time;
an end of stream while a request runs stops generation at once; a Cancel stops it within
one chunk and answers with ``Failure("cancelled", ...)``. Chunks produced while a write is
in flight go out together in the next write. Every task runs in a nursery of the session
handler; nothing is fire-and-forget.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import trio

from p2pserve.backends.base import Finished
from p2pserve.clock import Clock
from p2pserve.crypto import Signer, sha256
from p2pserve.errors import BackendError, BadRequest, ProtocolError, RemoteProtocolError, ServingError, TransportError
from p2pserve.jsonbody import parse_json_body
from p2pserve.net.framed import FramedStream
from p2pserve.policies import OfferContext, Policy
from p2pserve.rng import derive
from p2pserve.serving.events import Admission, Deadlines, ServeCounters, Wallet
from p2pserve.serving.local import LocalModels
from p2pserve.serving.receipts import Bounds, ReplayGuard, price_for
from p2pserve.serving.replay_log import ReplayLog
from p2pserve.transport import Stream
from p2pserve.wire.infer import Accept, Cancel, Chunk, Done, Failure, InferRequest, Receipt, Reject
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["InferExecutor"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Session:
    """State of one executor-side offer session (one stream, offers one after another)."""

    busy: bool = False
    """An offer was received and its final message not yet queued."""
    gone: bool = False
    """The requester ended the stream (or it broke): no more offers, stop the running one."""
    running: trio.CancelScope | None = None
    """The running request's scope, cancelled when the requester goes."""
    request_id: bytes = b""
    """The running request's ID."""
    generation: trio.CancelScope | None = None
    """The running request's generation only, cancelled by the requester's Cancel."""


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


class InferExecutor:
    """Answers peers' offers with this node's local models; :meth:`handle_offer` is the
    ``/p2pserve/infer/1`` handler.

    ``local`` is the node's :class:`~p2pserve.serving.local.LocalModels` (backends, prices,
    loads, what runs, our own backlog), shared with the requester side: a price changed
    there applies to the next offer. ``seed`` derives each offer's random draws (the
    policy's accept coin) from the offer itself, so the order offers arrive in does not
    change them. ``clock`` checks offers' age and stamps receipts.
    """

    on_receipt_issued: Callable[[Receipt, float, float], None] | None = None
    """Told ``(receipt, accepted_at, now)`` after each receipt this executor signs (final or
    partial, for a free offer too), in trio's time: when the offer was accepted and now.
    Synchronous; must not block or raise."""

    def __init__(
        self,
        signer: Signer,
        network_id: str,
        local: LocalModels,
        policy: Policy,
        seed: int,
        *,
        deadlines: Deadlines,
        counters: ServeCounters,
        clock: Clock,
        wallet: Wallet | None = None,
        replay_log: ReplayLog | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.signer = signer
        self.limits = limits
        self.network_id = network_id
        self.local = local
        self.policy = policy
        self.seed = seed
        self.deadlines = deadlines
        self.counters = counters
        self.clock = clock
        self.replay = ReplayGuard(int(deadlines.replay_window_s * 1000))
        self.wallet = wallet
        self.replay_log = replay_log
        if replay_log is not None:
            for requester, request_id, created_ms in replay_log.open(self._now_ms(), self.replay.window_ms):
                self.replay.remember(requester, request_id, created_ms)

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    def _now_ms(self) -> int:
        return self.clock.wall_ms()

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
        if len(req.body) > self.limits.max_prompt or len(req.continuation) > self.limits.max_prompt:
            return "too-large"
        backend = self.local.backends.get(req.model)
        if backend is None:
            return "unknown-model"
        if req.max_price_per_1k < self.local.price(req.model):
            return "price"
        if req.continuation and not backend.supports_continuation:
            return "no-continuation"
        if req.model in self.local.down:
            return "backend-down"
        reason = self.replay.check(req.requester, req.request_id, req.created_ms, self._now_ms())
        if reason is None and self.replay_log is not None:
            self.replay_log.append(req.requester, req.request_id, req.created_ms)
            if self.replay_log.needs_compaction():
                self.replay_log.compact(self.replay.entries())
        return reason

    async def handle_offer(self, stream: Stream) -> None:
        """Executor side of ``/p2pserve/infer/1``: a session of offers, one after another.

        The requester sends its next InferRequest only after the previous one's final
        message (Reject, Done or Failure); an offer while a request runs is a protocol
        error and ends the session. An end of stream (or a reset) while a request runs
        means the requester left: generation stops at once. The session ends quietly at an
        end of stream between requests, or when no offer comes within ``accept_s`` (the
        first) or ``session_idle_s`` (later ones)."""
        fs = FramedStream(stream, self.limits.max_frame)
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
                    msg = await fs.recv_or_eof((InferRequest, Cancel))
                    if msg is None:
                        break
                    if isinstance(msg, Cancel):
                        # stop the running request's generation; late Cancels are harmless
                        if session.generation is not None and msg.request_id == session.request_id:
                            session.generation.cancel()
                        continue
                    assert isinstance(msg, InferRequest)
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
            try:  # a peer's bytes: too deep, not JSON or not text (a lone surrogate) is a refusal, not a crash
                body = parse_json_body(req.body)
            except BadRequest:
                body = None
            if not isinstance(body, dict):
                reason = "bad-body"
        admission: Admission | None = None
        bounds = Bounds.of(body, len(req.body), req.continuation, self.local.backends[req.model].context_length) if reason is None else None
        if reason is None:
            if not self.local.backends[req.model].load_over_network:
                await self.local.read_load(req.model)  # exact and free; a scrape would make the offer wait
            offer = OfferContext(req.model, req.requester, bool(req.continuation))
            rng = derive(self.seed, "offer", req.requester, req.request_id)
            if not self.policy.accept(offer, [self.local.view(req.model)], self.local.backlog(), rng):
                reason = "busy"
        if reason is None and self.wallet is not None and bounds is not None:
            worst = price_for(bounds.worst_case_tokens(), self.local.price(req.model))
            if worst > 0:
                admitted = self.wallet.admit(req.requester, worst)
                if isinstance(admitted, str):
                    reason = admitted
                else:
                    admission = admitted
        if reason is not None:
            self.counters.offers_rejected += 1
            session.busy = False
            try:
                await fs.send(Reject(req.request_id, reason), timeout=d.send_s)
            except TransportError as exc:
                log.debug("reject to %s not sent: %s", fs.remote_peer, exc)
                return False
            return True
        assert bounds is not None
        try:
            return await self._execute(fs, session, req, body, bounds, admission)
        finally:
            if admission is not None:
                admission.close()

    async def _execute(
        self, fs: FramedStream, session: _Session, req: InferRequest, body: dict[str, Any], bounds: Bounds,
        admission: Admission | None,
    ) -> bool:
        """Accept, run and answer ``req``; True when its final message went out."""
        backend = self.local.backends[req.model]
        outbox = _Outbox(fs, self.deadlines.send_s)
        sent: list[str] = []
        job = _Job(req, bounds, admission, trio.current_time())
        with self.local.running(req.model):
            gen = backend.generate(req.kind, body, continuation=req.continuation)  # type: ignore[arg-type]
            try:
                with trio.CancelScope() as scope:
                    session.running = scope
                    session.request_id = req.request_id
                    if session.gone:
                        scope.cancel()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(outbox.run, scope)
                        await outbox.put(Accept(req.request_id))
                        await self._answer(outbox, session, job, gen, sent)
                        await outbox.flush()
                        nursery.cancel_scope.cancel()
            finally:
                session.running = None
                session.generation = None
                aclose = getattr(gen, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True):
                        await aclose()
        return not scope.cancelled_caught and outbox.error is None and not session.gone

    async def _answer(self, outbox: _Outbox, session: _Session, job: _Job, gen: AsyncIterator[Any], sent: list[str]) -> None:
        """Generate (until done, or until the requester's Cancel stops it)."""
        with trio.CancelScope() as generation:
            session.generation = generation
            await self._generate(outbox, session, job, gen, sent)
        session.generation = None
        if generation.cancelled_caught:  # the requester's Cancel: a partial receipt for what went out
            partial = self._receipt(job, "".join(sent), 0, len(sent), True) if sent else None
            session.busy = False
            await outbox.put(Failure("cancelled", "the requester cancelled the request", partial))

    async def _generate(
        self, outbox: _Outbox, session: _Session, job: _Job, gen: AsyncIterator[Any], sent: list[str]
    ) -> None:
        """Queue the answer's chunks and its final message (Done, or Failure on a backend error).

        The tokens of one backend read (deltas saying ``more``, then the read's last) go out
        as one Chunk: one frame to encode, send and check instead of one per token. ``sent``
        still gets one entry per token, once its chunk is queued: a partial receipt counts
        them (``len(sent)``) and covers exactly the text that went out."""
        chunks = 0
        held: list[str] = []

        async def send_held() -> None:
            nonlocal chunks
            text, limit = "".join(held), self.limits.max_text_chunk
            for start in range(0, len(text), limit):
                await outbox.put(Chunk(chunks, text[start : start + limit]))
                chunks += 1
            sent.extend(held)
            held.clear()

        try:
            async for ev in gen:
                if isinstance(ev, Finished):
                    await send_held()
                    receipt = self._receipt(job, "".join(sent), ev.prompt_tokens, ev.completion_tokens, False)
                    session.busy = False
                    await outbox.put(Done(ev.finish_reason, receipt))
                    self.counters.served_for_peers += 1
                    return
                if ev.text:
                    held.append(ev.text)
                if not ev.more:
                    await send_held()
            raise BackendError("backend ended without a Finished event")
        except (BackendError, ServingError) as exc:  # ServingError: e.g. BadRequest from a peer's body
            await send_held()  # generated before the error: it goes out, and is paid for
            partial = self._receipt(job, "".join(sent), 0, len(sent), True) if sent else None
            session.busy = False
            code = "backend-error" if isinstance(exc, BackendError) else exc.error_type
            await outbox.put(Failure(code, str(exc)[:4000], partial))

    def _receipt(self, job: _Job, text: str, prompt_tokens: int, completion_tokens: int, partial: bool) -> Receipt:
        """Our signed receipt for ``text``, token counts clamped to what the requester can
        check (a backend's ``usage`` may count tokens it never sent, e.g. reasoning)."""
        req = job.request
        completion_tokens = min(completion_tokens, job.bounds.completion_tokens(text))
        prompt_tokens = min(prompt_tokens, job.bounds.prompt_tokens())
        receipt = Receipt(
            request_id=req.request_id,
            network_id=req.network_id,
            requester=req.requester,
            executor=self.peer_id,
            model=req.model,
            request_hash=req.request_hash(),
            response_hash=sha256(text.encode()),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            price=price_for(completion_tokens, self.local.price(req.model)),
            partial=partial,
            timestamp_ms=self._now_ms(),
            signature=b"",
        ).signed(self.signer)
        if job.admission is not None:
            job.admission.issued(receipt)
        if self.on_receipt_issued is not None:
            self.on_receipt_issued(receipt, job.accepted_at, trio.current_time())
        return receipt


@dataclass(frozen=True, slots=True)
class _Job:
    """One accepted offer: the request, its receipt bounds, its admission and when (trio's
    time) it was accepted."""

    request: InferRequest
    bounds: Bounds
    admission: Admission | None
    accepted_at: float
