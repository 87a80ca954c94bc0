"""The requester side of ``/p2pserve/infer/1``: offering one request to one executor over a
session stream, relaying its answer, checking its receipt and paying it through a hold.

This module owns :class:`InferClient`: the pool of idle session streams per executor and
one remote try (:meth:`InferClient.run_remote`). Which executor to try, fail-over and
continuation are the serving service's decisions (:mod:`p2pserve.serving.service`).

A stream is a *session*: after an offer's last message (Reject, Done, Failure) the requester
may send the next offer on the same stream (a new stream costs a multistream-select
negotiation, ~3 ms of the ~5 ms the whole offload used to add). The client keeps such
idle streams per executor (``Deadlines.pool_idle_s``, newest first, at most
``MAX_IDLE_PER_PEER``) and closes any stream whose exchange did not end cleanly, so
abandoning an executor still means closing its stream. A reused stream that ends before
any reply is stale (the executor ended the idle session, or the connection died): it and
its idle siblings are dropped and the offer is sent once more on a new stream, with a new
request_id; that is not a fail-over. Chunks that arrived together become one TextDelta.

Guarantees of one try: every wait is bounded (:class:`~p2pserve.serving.events.Deadlines`);
the try ends with ``attempt.outcome`` set and its stream either back in the pool (only
after a clean final message, nothing unread) or closed, so a late reply is never read;
the worst-case price is held before the offer and a receipt is paid only through that
hold, after :func:`~p2pserve.serving.receipts.check_receipt` (token bounds the requester can check
itself, price, hashes); an executor that stalls after accepting, breaks the stream or the
protocol, leaves an offer unanswered or signs a bad receipt is recorded in the
:class:`~p2pserve.serving.offenders.OffenderBook`; a try closed early by its caller (the user
left) sends :class:`~p2pserve.wire.messages.Cancel` and pays the partial receipt for what
the executor produced until then.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

import trio

from p2pserve.backends.base import Kind, TextDelta
from p2pserve.clock import Clock
from p2pserve.crypto import Signer
from p2pserve.errors import (
    ConnectionBroken,
    P2PServeError,
    PeerTimeout,
    ProtocolError,
    RemoteProtocolError,
    StreamClosed,
    TransportError,
)
from p2pserve.membership.table import PeerTable
from p2pserve.net.framed import FramedStream
from p2pserve.serving.events import (
    INFER_PROTOCOL,
    Attempt,
    Completed,
    CreditHold,
    Deadlines,
    Progress,
    ServeCounters,
    ServeEvent,
    Started,
    Wallet,
)
from p2pserve.serving.offenders import Offence, OffenderBook
from p2pserve.serving.receipts import Bounds, check_receipt, price_for
from p2pserve.transport import Stream, Transport
from p2pserve.wire.messages import REQUEST_ID_SIZE, Accept, Cancel, Chunk, Done, Failure, InferRequest, Receipt, Reject

__all__ = ["InferClient"]

log = logging.getLogger(__name__)


class InferClient:
    """Offers requests to executors for one node, over pooled session streams.

    ``counters`` is the serving service's own object; ``on_receipt`` is awaited with every
    verified receipt (errors it raises are logged). ``clock`` stamps offers;
    everything else uses trio's clock. Call :meth:`close_idle` with ``math.inf`` when the
    node stops.
    """

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        network_id: str,
        peers: PeerTable,
        rng: random.Random,
        *,
        deadlines: Deadlines,
        counters: ServeCounters,
        on_receipt: Callable[[Receipt], Awaitable[None]] | None,
        clock: Clock,
        wallet: Wallet | None = None,
        offenders: OffenderBook | None = None,
    ) -> None:
        self.transport = transport
        self.signer = signer
        self.network_id = network_id
        self.peers = peers
        self.rng = rng
        self.deadlines = deadlines
        self.counters = counters
        self.on_receipt = on_receipt
        self.clock = clock
        self.wallet = wallet
        self.offenders = offenders if offenders is not None else OffenderBook()
        self.idle: dict[str, list[tuple[float, FramedStream]]] = {}
        """Per executor, session streams whose last request ended cleanly: (since, stream),
        reused newest first (a new stream costs a multistream negotiation)."""

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    MAX_IDLE_PER_PEER = 64
    """Idle session streams kept per executor (yamux allows 256 streams per connection)."""

    async def _checkout(self, peer: str) -> tuple[FramedStream, bool]:
        """A session stream to ``peer``: an idle one if fresh enough, else a new one.
        ``(stream, reused)``; raises PeerTimeout or DialError when none can be opened."""
        idle = self.idle.get(peer)
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
        idle = self.idle.setdefault(peer, [])
        if fs.buffered or len(idle) >= self.MAX_IDLE_PER_PEER:
            with trio.CancelScope(shield=True):
                await fs.aclose()
            return
        idle.append((trio.current_time(), fs))

    async def close_idle(self, older_than: float, peer: str | None = None) -> None:
        """Close idle session streams older than ``older_than`` seconds (of ``peer``, or all)."""
        now = trio.current_time()
        for p in [peer] if peer is not None else list(self.idle):
            idle = self.idle.get(p, [])
            keep = [(t, fs) for t, fs in idle if now - t < older_than]
            drop = [fs for t, fs in idle if now - t >= older_than]
            if keep:
                self.idle[p] = keep
            else:
                self.idle.pop(p, None)
            for fs in drop:
                await fs.aclose()

    async def run_remote(
        self, peer: str, kind: Kind, model: str, body: dict[str, Any], body_bytes: bytes, progress: Progress,
        attempt: Attempt,
    ) -> AsyncGenerator[ServeEvent, None]:
        """Offer the request to ``peer`` and relay its answer. Sets ``attempt.outcome``.

        Before the offer, the worst-case price is held in the wallet (no hold: the peer is
        skipped, not excluded); the receipt is paid through the hold. If the caller closes
        this generator while the answer streams (its user left), the executor is told to
        stop (:class:`Cancel`) and the partial receipt for what it produced is paid."""
        entry = self.peers.get(peer)
        advertised = entry.model(model) if entry is not None else None
        if advertised is None:
            progress.reasons.append(f"{peer[-8:]}: gone")
            return
        bounds = Bounds.of(body, len(body_bytes), progress.text, advertised.context_length)
        worst = price_for(bounds.worst_case_tokens(), advertised.price_per_1k)
        hold = self.wallet.hold(worst) if self.wallet is not None and worst > 0 else None
        if self.wallet is not None and worst > 0 and hold is None:
            progress.reasons.append(f"{peer[-8:]}: cannot afford its worst case ({worst} micro-credits)")
            return
        x = _Exchange(peer, bounds, hold, trio.current_time() + self.deadlines.request_s)
        try:
            request = await self._offer(x, model, kind, body_bytes, progress, advertised.price_per_1k)
            if request is None:
                return
            async with aclosing(self._relay(x, request, progress, attempt)) as events:
                async for ev in events:
                    yield ev
        except (TransportError, ProtocolError) as exc:
            x.failed = True
            self._offence(x, exc)
            progress.reasons.append(f"{peer[-8:]}: {type(exc).__name__} ({exc})")
            progress.excluded.add(peer)
            if attempt.sent_text:
                progress.completion_tokens += len(attempt.sent_text)
            attempt.outcome = "failed" if attempt.sent_text else "refused"
        finally:
            with trio.CancelScope(shield=True):
                if x.streaming and not x.failed and x.fs is not None and x.request is not None:
                    x.reusable = await self._cancel_remote(x, attempt)  # the user left mid-answer
                if hold is not None:
                    hold.release()
                if x.fs is not None:
                    if x.reusable:
                        await self._checkin(peer, x.fs)
                    else:
                        await x.fs.aclose()

    async def _offer(
        self, x: _Exchange, model: str, kind: Kind, body_bytes: bytes, progress: Progress, price_per_1k: int
    ) -> InferRequest | None:
        """Send the offer; the request if accepted, None if rejected (raises on failures)."""
        d = self.deadlines
        while True:
            x.fs, reused = await self._checkout(x.peer)
            request = InferRequest(
                request_id=self.rng.randbytes(REQUEST_ID_SIZE),
                network_id=self.network_id,
                requester=self.peer_id,
                executor=x.peer,
                model=model,
                kind=kind,
                body=body_bytes,
                created_ms=self.clock.wall_ms(),
                continuation=progress.text,
                max_price_per_1k=price_per_1k,
                signature=b"",
            ).signed(self.signer)
            try:
                await x.fs.send(request, timeout=d.send_s)
                reply = cast("Accept | Reject", await x.fs.recv((Accept, Reject), timeout=d.accept_s))
            except (ConnectionBroken, StreamClosed):
                if not reused:
                    raise
                # the executor ended this idle session (or its connection died): the
                # other idle ones are as stale; retry once on a new stream (new request id)
                with trio.CancelScope(shield=True):
                    await x.fs.aclose()
                    await self.close_idle(0.0, x.peer)
                x.fs = None
                continue
            break
        if isinstance(reply, Reject):
            x.reusable = True
            progress.reasons.append(f"{x.peer[-8:]}: rejected ({reply.reason})")
            if reply.reason not in ("busy", "no-continuation"):
                progress.excluded.add(x.peer)
            return None
        if reply.request_id != request.request_id:
            raise RemoteProtocolError("Accept for another request")
        x.request = request
        x.streaming = True
        return request

    async def _relay(
        self, x: _Exchange, request: InferRequest, progress: Progress, attempt: Attempt
    ) -> AsyncGenerator[ServeEvent, None]:
        """Relay the accepted answer's chunks, then settle its Done or Failure."""
        d = self.deadlines
        assert x.fs is not None
        timeout = d.first_token_s
        while True:
            remaining = x.hard_deadline - trio.current_time()
            msg: Chunk | Done | Failure | None
            msg = cast("Chunk | Done | Failure", await x.fs.recv((Chunk, Done, Failure), timeout=max(0.0, min(timeout, remaining))))
            # chunks that arrived together leave as one TextDelta (one SSE event, one task switch)
            texts: list[str] = []
            while isinstance(msg, Chunk):
                if msg.index != x.chunks_seen:
                    raise RemoteProtocolError(f"chunk {msg.index} out of order (expected {x.chunks_seen})")
                x.chunks_seen += 1
                timeout = d.idle_s
                if msg.text:
                    texts.append(msg.text)
                msg = cast("Chunk | Done | Failure | None", x.fs.recv_buffered((Chunk, Done, Failure)))
            if not isinstance(msg, Chunk | None):
                x.streaming = False
                x.reusable = True  # the executor's last message: the session may carry another offer
            if texts:
                if not attempt.sent_text:
                    yield Started(x.peer, local=False, resumed=bool(progress.delivered))
                attempt.sent_text.extend(texts)
                progress.delivered.extend(texts)
                yield TextDelta("".join(texts))
            if msg is None:
                continue
            if isinstance(msg, Done):
                receipt = await self._settle(x, msg.receipt, "".join(attempt.sent_text), partial=False)
                if not attempt.sent_text:
                    yield Started(x.peer, local=False, resumed=bool(progress.delivered))
                progress.completion_tokens += (
                    receipt.completion_tokens if receipt is not None else msg.receipt.completion_tokens
                )
                if receipt is not None:
                    progress.receipts.append(receipt)
                    self.offenders.served(x.peer)
                self.counters.offloaded += 1
                attempt.outcome = "completed"
                attempt.completed = Completed(
                    msg.finish_reason,
                    msg.receipt.prompt_tokens,
                    progress.completion_tokens,
                    x.peer,
                    local=False,
                    receipt=receipt,
                    receipts=tuple(progress.receipts),
                )
                return
            await self._failed(x, msg, progress, attempt)
            return

    async def _failed(self, x: _Exchange, msg: Failure, progress: Progress, attempt: Attempt) -> None:
        """The executor reported a failure (a partial receipt covers what it sent)."""
        if msg.receipt is not None and attempt.sent_text:
            receipt = await self._settle(x, msg.receipt, "".join(attempt.sent_text), partial=True)
            if receipt is not None:
                progress.receipts.append(receipt)
                progress.completion_tokens += receipt.completion_tokens
            else:
                progress.completion_tokens += len(attempt.sent_text)
        elif attempt.sent_text:
            progress.completion_tokens += len(attempt.sent_text)
        progress.reasons.append(f"{x.peer[-8:]}: failed ({msg.code}: {msg.message})")
        progress.excluded.add(x.peer)
        attempt.outcome = "failed" if attempt.sent_text else "refused"

    def _offence(self, x: _Exchange, exc: P2PServeError) -> None:
        """Record what the executor did wrong (failures that are not its fault are not)."""
        now = trio.current_time()
        if isinstance(exc, RemoteProtocolError):
            kind: Offence | None = Offence.PROTOCOL
        elif isinstance(exc, PeerTimeout):
            kind = Offence.STALL if x.streaming else Offence.NO_REPLY
        elif isinstance(exc, (ConnectionBroken, StreamClosed)) and x.streaming:
            kind = Offence.BROKEN
        else:
            kind = None
        if kind is not None:
            cooldown = self.offenders.offence(x.peer, kind, now)
            log.warning("executor %s: %s (%s); not offered work for %.0f s", x.peer, kind.value, exc, cooldown)

    async def _cancel_remote(self, x: _Exchange, attempt: Attempt) -> bool:
        """Our user left mid-answer: tell the executor to stop, read what it still sends
        (bounded), and pay the receipt for exactly the text it produced. True when the
        session ended cleanly (reusable)."""
        assert x.fs is not None and x.request is not None
        texts = list(attempt.sent_text)
        with trio.move_on_after(self.deadlines.cancel_s):
            try:
                await x.fs.send(Cancel(x.request.request_id), timeout=self.deadlines.send_s)
                while True:
                    msg = await x.fs.recv((Chunk, Done, Failure), timeout=self.deadlines.idle_s)
                    if isinstance(msg, Chunk):
                        if msg.index != x.chunks_seen:
                            return False
                        x.chunks_seen += 1
                        texts.append(msg.text)
                        continue
                    assert isinstance(msg, (Done, Failure))
                    if msg.receipt is not None and texts:
                        await self._settle(x, msg.receipt, "".join(texts), partial=isinstance(msg, Failure))
                    return True
            except P2PServeError as exc:
                log.debug("cancelling %s on %s: %s", x.request.request_id.hex(), x.peer, exc)
        return False

    async def _settle(self, x: _Exchange, receipt: Receipt, text: str, *, partial: bool) -> Receipt | None:
        """The receipt if it verifies and is within bounds (then it is paid), else None."""
        ok = self._check_and_pay(x, receipt, text, partial=partial)
        if ok is not None and self.on_receipt is not None:
            try:
                await self.on_receipt(ok)
            except P2PServeError as exc:
                log.warning("receipt observer failed for %s: %s", ok.request_id.hex(), exc)
        return ok

    def _check_and_pay(self, x: _Exchange, receipt: Receipt, text: str, *, partial: bool) -> Receipt | None:
        assert x.request is not None
        try:
            check_receipt(receipt, x.request, text, partial=partial, bounds=x.bounds)
        except RemoteProtocolError as exc:
            self.counters.bad_receipts += 1
            cooldown = self.offenders.offence(x.peer, Offence.BAD_RECEIPT, trio.current_time())
            log.warning("refusing receipt from %s (not paid; not offered work for %.0f s): %s", x.peer, cooldown, exc)
            return None
        if x.hold is not None:
            x.hold.pay(receipt)
        return receipt


@dataclass(slots=True)
class _Exchange:
    """One remote try's state shared by its steps."""

    peer: str
    bounds: Bounds
    hold: CreditHold | None
    hard_deadline: float
    fs: FramedStream | None = None
    request: InferRequest | None = None
    streaming: bool = False
    """Accepted, and the final message not received yet."""
    failed: bool = False
    reusable: bool = False
    chunks_seen: int = 0
