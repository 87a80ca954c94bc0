"""The requester side of ``/p2pserve/infer/1``: offering one request to one executor over a
session stream, relaying its answer and checking its receipt.

This module owns :class:`InferClient`: the pool of idle session streams per executor and
one remote try (:meth:`InferClient.run_remote`). Which executor to try, fail-over and
continuation are the serving service's decisions (:mod:`p2pserve.serve`).

A stream is a *session*: after an offer's last message (Reject, Done, Failure) the requester
may send the next offer on the same stream (a new stream costs a multistream-select
negotiation, ~3 ms of the ~5 ms the whole offload used to add). The client keeps such
idle streams per executor (``Deadlines.pool_idle_s``, newest first, at most
``MAX_IDLE_PER_PEER``) and closes any stream whose exchange did not end cleanly, so
abandoning an executor still means closing its stream. A reused stream that ends before
any reply is stale (the executor ended the idle session, or the connection died): it and
its idle siblings are dropped and the offer is sent once more on a new stream, with a new
request_id; that is not a fail-over. Chunks that arrived together become one TextDelta.

Guarantees of one try: every wait is bounded (:class:`~p2pserve.serve_types.Deadlines`);
the try ends with ``attempt.outcome`` set and its stream either back in the pool (only
after a clean final message, nothing unread) or closed, so a late reply is never read;
receipts are checked (:func:`~p2pserve.receipts.check_receipt`) before ``on_receipt``
pays them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import cast

import trio

from p2pserve.backends.base import Kind, TextDelta
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
from p2pserve.framed import FramedStream
from p2pserve.peers import PeerTable
from p2pserve.receipts import check_receipt
from p2pserve.serve_types import INFER_PROTOCOL, Attempt, Completed, Deadlines, Progress, ServeCounters, ServeEvent, Started
from p2pserve.transport import Stream, Transport
from p2pserve.wire.messages import REQUEST_ID_SIZE, Accept, Chunk, Done, Failure, InferRequest, Receipt, Reject

__all__ = ["InferClient"]

log = logging.getLogger(__name__)


class InferClient:
    """Offers requests to executors for one node, over pooled session streams.

    ``counters`` is the serving service's own object; ``on_receipt`` is awaited with every
    verified receipt (errors it raises are logged). ``wall_clock`` (seconds) stamps offers;
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
        wall_clock: Callable[[], float],
    ) -> None:
        self.transport = transport
        self.signer = signer
        self.network_id = network_id
        self.peers = peers
        self.rng = rng
        self.deadlines = deadlines
        self.counters = counters
        self.on_receipt = on_receipt
        self.wall_clock = wall_clock
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
        self, peer: str, kind: Kind, model: str, body_bytes: bytes, progress: Progress, attempt: Attempt
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
                    reply = cast("Accept | Reject", await fs.recv((Accept, Reject), timeout=d.accept_s))
                except (ConnectionBroken, StreamClosed):
                    if not reused:
                        raise
                    # the executor ended this idle session (or its connection died): the
                    # other idle ones are as stale; retry once on a new stream (new request id)
                    with trio.CancelScope(shield=True):
                        await fs.aclose()
                        await self.close_idle(0.0, peer)
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
                msg = cast("Chunk | Done | Failure", await fs.recv((Chunk, Done, Failure), timeout=max(0.0, min(timeout, remaining))))
                # chunks that arrived together leave as one TextDelta (one SSE event, one task switch)
                texts: list[str] = []
                while isinstance(msg, Chunk):
                    if msg.index != chunks_seen:
                        raise RemoteProtocolError(f"chunk {msg.index} out of order (expected {chunks_seen})")
                    chunks_seen += 1
                    timeout = d.idle_s
                    if msg.text:
                        texts.append(msg.text)
                    msg = cast("Chunk | Done | Failure | None", fs.recv_buffered((Chunk, Done, Failure)))
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
        self, receipt: Receipt, request: InferRequest, attempt: Attempt, *, partial: bool
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
