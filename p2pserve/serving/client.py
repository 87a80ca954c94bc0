"""The requester side of ``/p2pserve/infer/1``: the async shell that drives one
:class:`~p2pserve.serving.offer.OfferSession` per try over a pooled session stream.

This module owns :class:`InferClient`: session streams per executor (a
:class:`~p2pserve.net.exchange.SessionPool`) and one remote try
(:meth:`InferClient.run_remote`). The protocol itself (message order, deadlines, receipt
checks, what is an offence) is the pure session machine; this shell only sends what it says,
feeds it what arrives, and acts on its events. Which executor to try, fail-over and
continuation are the lifecycle's decisions (:mod:`p2pserve.serving.dispatch`).

Guarantees of one try: before the offer, the worst-case price is held in the wallet (no
hold: the peer is skipped); every wait is bounded (the session's deadline); chunks that
arrived together leave as one TextDelta; the stream goes back to the pool only after a
clean final message with nothing unread, else it is closed, so a late reply is never read;
a receipt is paid (through the hold) only after the session checked it; offences go to
the :class:`~p2pserve.serving.offenders.OffenderBook` and to the log as ``offence`` events
(:class:`OffenceLines`: at most one line per executor and kind a minute); a reused stream that turns out
stale (the executor ended the idle session) is replaced once, with a new request ID, and
that is not a fail-over; a try closed early by its caller (the user left) sends Cancel and
pays the partial receipt for what the executor produced until then.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import trio

from p2pserve.backends.base import Kind, TextDelta
from p2pserve.clock import Clock
from p2pserve.crypto import Signer
from p2pserve.errors import ConnectionBroken, P2PServeError, RemoteProtocolError, StreamClosed, TransportError
from p2pserve.eventlog import event
from p2pserve.membership.ratelimit import LineBudget, OffenceLog
from p2pserve.membership.table import PeerTable
from p2pserve.net.exchange import SessionPool
from p2pserve.net.framed import FramedStream
from p2pserve.serving.events import (
    Attempt,
    Completed,
    CreditHold,
    Deadlines,
    Outcome,
    Progress,
    ServeCounters,
    ServeEvent,
    Started,
    Wallet,
)
from p2pserve.serving.offenders import Offence, OffenderBook
from p2pserve.serving.offer import TERMINAL, Ended, Event, Input, OfferSession, SendCancel, Settled, State, Text
from p2pserve.serving.receipts import Bounds, price_for
from p2pserve.transport import Transport
from p2pserve.wire.infer import INFER_PROTOCOL, REQUEST_ID_SIZE, Cancel, Chunk, Done, Failure, InferRequest, Receipt
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits

__all__ = ["InferClient", "OffenceLines"]

log = logging.getLogger(__name__)

_ANSWER = (Chunk, Done, Failure)


class OffenceLines:
    """The ``offence`` lines of the serving layer (an executor that left an offer unanswered,
    stalled, broke its stream or the protocol, signed a bad receipt, or could not be
    reached after advertising): the first of a kind by a peer at once, then at most one per
    peer and kind every ``every_s`` seconds, carrying the ``count`` of offences it covers
    (:class:`~p2pserve.membership.ratelimit.OffenceLog`); and, across peers, no more than a
    :class:`~p2pserve.membership.ratelimit.LineBudget` allows (identities are free), the
    next line written saying how many were left out."""

    def __init__(self, *, every_s: float = 60.0, burst: int = 20, period: float = 3.0) -> None:
        self.offences = OffenceLog(every_s=every_s)
        self.lines = LineBudget(burst=burst, period=period)

    def record(self, peer: str, kind: str, what: str, now: float, **fields: Any) -> bool:
        """Count one offence of ``kind`` by ``peer``; True when a line was written for it."""
        n = self.offences.record(peer, kind, now)
        if n is None:
            return False
        left_out = self.lines.take("offence", now)
        if left_out is None:
            return False
        event(log, "offence", level=logging.WARNING, peer=peer, kind=kind, what=what, count=n, **fields,
              **({"lines_left_out": left_out} if left_out else {}))
        return True


class InferClient:
    """Offers requests to executors for one node, over pooled session streams.

    ``counters`` is the serving service's own object; ``on_receipt`` is awaited with every
    verified receipt (an observer; errors it raises are logged); ``clock`` stamps offers.
    Call :meth:`close_idle` with ``math.inf`` when the node stops.
    """

    MAX_IDLE_PER_PEER = 64
    """Idle session streams kept per executor (yamux allows 256 streams per connection)."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        network_id: str,
        peers: PeerTable,
        *,
        deadlines: Deadlines,
        counters: ServeCounters,
        on_receipt: Callable[[Receipt], Awaitable[None]] | None,
        clock: Clock,
        wallet: Wallet | None = None,
        offenders: OffenderBook | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.signer = signer
        self.network_id = network_id
        self.peers = peers
        self.deadlines = deadlines
        self.counters = counters
        self.on_receipt = on_receipt
        self.clock = clock
        self.wallet = wallet
        self.offenders = offenders if offenders is not None else OffenderBook()
        self.offence_lines = OffenceLines()
        """The ``offence`` lines (the serving service writes its unreachable ones here too)."""
        self.pool = SessionPool(
            transport, INFER_PROTOCOL, idle_s=deadlines.pool_idle_s, connect_s=deadlines.connect_s,
            max_per_peer=self.MAX_IDLE_PER_PEER, max_frame=limits.max_frame,
        )

    @property
    def peer_id(self) -> str:
        return self.signer.peer_id

    @property
    def idle(self) -> dict[str, list[tuple[float, FramedStream]]]:
        """Idle session streams per executor (see :class:`~p2pserve.net.exchange.SessionPool`)."""
        return self.pool.idle

    async def close_idle(self, older_than: float, peer: str | None = None) -> None:
        await self.pool.close_idle(older_than, peer)

    # --- one try -----------------------------------------------------------------------------

    async def run_remote(
        self, peer: str, kind: Kind, model: str, body: dict[str, Any], body_bytes: bytes, progress: Progress,
        attempt: Attempt, rng: random.Random,
    ) -> AsyncGenerator[ServeEvent, None]:
        """Offer the request to ``peer`` and relay its answer; ends ``attempt``."""
        entry = self.peers.get(peer)
        advertised = entry.model(model) if entry is not None else None
        if advertised is None:
            attempt.end(progress, peer, Outcome.REFUSED, "gone")
            return
        bounds = Bounds.of(body, len(body_bytes), progress.text, advertised.context_length)
        worst = price_for(bounds.worst_case_tokens(), advertised.price_per_1k)
        hold: CreditHold | None = None
        if self.wallet is not None and worst > 0:
            hold = self.wallet.hold(worst)
            if hold is None:
                attempt.end(progress, peer, Outcome.REFUSED, f"cannot afford its worst case ({worst} micro-credits)")
                return
        hard_deadline = trio.current_time() + self.deadlines.request_s
        fs: FramedStream | None = None
        session: OfferSession | None = None
        try:
            try:
                fs, session, events = await self._offer(peer, kind, model, body_bytes, progress.text,
                                                         advertised.price_per_1k, bounds, hard_deadline, rng)
            except TransportError as exc:  # could not reach it at all: not its fault, not again for this request
                attempt.end(progress, peer, Outcome.REFUSED, f"{type(exc).__name__} ({exc})", exclude=True)
                return
            refused: str | None = None  # why the executor's receipt was refused
            while True:
                texts: list[str] = []
                for ev in events:
                    if isinstance(ev, Text):
                        texts.append(ev.text)
                    elif isinstance(ev, Settled):
                        refused = await self._settled(peer, ev, hold, progress) or refused
                    elif isinstance(ev, Ended):
                        if texts:
                            for out in self._deliver(peer, texts, progress, attempt):
                                yield out
                        for out in self._ended(peer, ev, session, progress, attempt, refused):
                            yield out
                        return
                if texts:
                    for out in self._deliver(peer, texts, progress, attempt):
                        yield out
                events = await self._pump(fs, session)
        finally:
            with trio.CancelScope(shield=True):
                await self._close(peer, fs, session, hold, progress)

    async def _offer(
        self, peer: str, kind: Kind, model: str, body_bytes: bytes, continuation: str, price_per_1k: int,
        bounds: Bounds, hard_deadline: float, rng: random.Random,
    ) -> tuple[FramedStream, OfferSession, list[Event]]:
        """Send the offer and read its first reply (retrying once on a stale pooled stream)."""
        while True:
            fs, reused = await self.pool.checkout(peer)
            request = InferRequest(
                request_id=rng.randbytes(REQUEST_ID_SIZE),
                network_id=self.network_id,
                requester=self.peer_id,
                executor=peer,
                model=model,
                kind=kind,
                body=body_bytes,
                created_ms=self.clock.wall_ms(),
                continuation=continuation,
                max_price_per_1k=price_per_1k,
                signature=b"",
            ).signed(self.signer)
            session = OfferSession(request, bounds, self.deadlines, hard_deadline)
            try:
                await fs.send(request, timeout=self.deadlines.send_s)
            except (ConnectionBroken, StreamClosed) as exc:
                events = session.closed(str(exc))
            except TransportError:
                with trio.CancelScope(shield=True):
                    await fs.aclose()
                raise
            else:
                session.sent(trio.current_time())
                events = await self._pump(fs, session)
            stale = reused and session.state is State.REFUSED and session.ended_by is Input.CLOSED
            if not stale:
                return fs, session, events
            # the executor ended this idle session (or its connection died): the other idle
            # ones are as stale; retry once on a new stream, with a new request id
            with trio.CancelScope(shield=True):
                await fs.aclose()
                await self.pool.close_idle(0.0, peer)

    async def _pump(self, fs: FramedStream, s: OfferSession) -> list[Event]:
        """Wait (until the session's deadline) for what comes next; the session's events."""
        events: list[Event] = []
        try:
            msg = fs.recv_buffered()
            if msg is None:
                deadline = s.deadline if s.deadline is not None else trio.current_time()
                with trio.move_on_at(deadline) as scope:
                    msg = await fs.recv()
                if scope.cancelled_caught:
                    return s.timeout(max(trio.current_time(), deadline))
            events += s.receive(msg, trio.current_time())
            # whatever else already arrived is taken now (one TextDelta for a burst of chunks)
            while s.state not in TERMINAL:
                more = fs.recv_buffered()
                if more is None:
                    break
                events += s.receive(more, trio.current_time())
        except (ConnectionBroken, StreamClosed) as exc:
            events += s.closed(str(exc))
        except RemoteProtocolError as exc:
            events += s.garbage(str(exc))
        except TransportError as exc:
            events += s.closed(str(exc))
        return events

    def _deliver(self, peer: str, texts: list[str], progress: Progress, attempt: Attempt) -> list[ServeEvent]:
        out: list[ServeEvent] = []
        if not attempt.sent_text:
            out.append(Started(peer, local=False, resumed=bool(progress.delivered)))
        attempt.sent_text.extend(texts)
        progress.delivered.extend(texts)
        out.append(TextDelta("".join(texts)))
        return out

    async def _settled(self, peer: str, ev: Settled, hold: CreditHold | None, progress: Progress) -> str | None:
        """The session checked a receipt: pay it (through the hold), or count it refused and
        say why (the offence is booked with the try's end)."""
        if ev.receipt is None:
            self.counters.bad_receipts += 1
            log.debug("refusing receipt from %s (not paid): %s", peer, ev.problem)
            return f"receipt refused, not paid: {ev.problem}"
        progress.receipts.append(ev.receipt)
        if hold is not None:
            hold.pay(ev.receipt)
        if self.on_receipt is not None:
            try:
                await self.on_receipt(ev.receipt)
            except P2PServeError as exc:
                log.warning("receipt observer failed for %s: %s", ev.receipt.request_id.hex(), exc)
        return None

    def _ended(
        self, peer: str, ev: Ended, s: OfferSession, progress: Progress, attempt: Attempt, refused: str | None
    ) -> list[ServeEvent]:
        """Book how the try ended (an offence: cooling off, and an ``offence`` line); the
        events that close it (a Started for an empty answer; the service yields the Completed)."""
        if ev.offence is not None:
            now = trio.current_time()
            cooldown = self.offenders.offence(peer, ev.offence, now)
            what = refused if ev.offence is Offence.BAD_RECEIPT and refused else ev.reason
            self.offence_lines.record(peer, ev.offence.value, what, now, cooldown_s=cooldown)
        settled = s.receipt
        out: list[ServeEvent] = []
        if ev.outcome is Outcome.COMPLETED:
            assert isinstance(ev.final, Done)
            if settled is not None:
                self.offenders.served(peer)
            if not attempt.sent_text:
                out.append(Started(peer, local=False, resumed=bool(progress.delivered)))
            attempt.end(progress, peer, Outcome.COMPLETED,
                        tokens=(settled or ev.final.receipt).completion_tokens)
            self.counters.offloaded += 1
            attempt.completed = Completed(
                ev.final.finish_reason, ev.final.receipt.prompt_tokens, progress.completion_tokens, peer,
                local=False, receipt=settled, receipts=tuple(progress.receipts), offer=s.request,
            )
            return out
        partial = settled.completion_tokens if settled is not None and isinstance(ev.final, Failure) else None
        attempt.end(progress, peer, ev.outcome, ev.reason, exclude=ev.exclude, tokens=partial)
        return out

    async def _close(
        self, peer: str, fs: FramedStream | None, s: OfferSession | None, hold: CreditHold | None, progress: Progress
    ) -> None:
        """End the try's stream: cancel a running answer (the caller left), then pool or close."""
        if fs is not None and s is not None and s.state is State.STREAMING:
            await self._cancel(fs, s, peer, hold, progress)
        if hold is not None:
            hold.release()
        if fs is None:
            return
        if s is not None and s.reusable:
            await self.pool.checkin(peer, fs)
        else:
            await fs.aclose()

    async def _cancel(self, fs: FramedStream, s: OfferSession, peer: str, hold: CreditHold | None, progress: Progress) -> None:
        """Our user left mid-answer: tell the executor, read until its partial receipt, pay it."""
        events = s.cancel(trio.current_time())
        while True:
            for ev in events:
                if isinstance(ev, SendCancel):
                    try:
                        await fs.send(Cancel(s.request.request_id), timeout=self.deadlines.send_s)
                    except TransportError as exc:
                        log.debug("cancel to %s not sent: %s", peer, exc)
                        return
                elif isinstance(ev, Settled):
                    refused = await self._settled(peer, ev, hold, progress)
                    if refused is not None:  # the cancel path books no offence: say it at least
                        self.offence_lines.record(peer, Offence.BAD_RECEIPT.value, f"{refused} (after our cancel)",
                                                  trio.current_time())
                elif isinstance(ev, Ended):
                    return
            events = await self._pump(fs, s)

