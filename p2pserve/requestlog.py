"""One log line per user request, from the serving service's :class:`~p2pserve.serving.tracer.Tracer`
seam: where it ran, how long it took, its tokens and price (``docs/operations.md``, "Logs").

:class:`RequestLog` is the node's tracer. It keeps what each running request has done so
far (keyed by the request's key; every request the service starts it also ends, so the map
holds only running requests) and writes, through :func:`p2pserve.eventlog.event`:

* ``request_local`` / ``request_offloaded`` when a request completes (tokens and price come
  from :meth:`RequestLog.completed`, which the node calls from ``ServeService.on_completed``);
* ``request_failover`` when a request moves to another executor: at INFO after an executor
  failed mid-answer, at DEBUG after one refused the offer (busy peers refuse all the time;
  the final line counts the ``attempts``);
* ``request_failed`` or ``request_cancelled`` (the user left during an answer) otherwise:
  WARNING when executors were tried, INFO when none was (an unknown model, a bad body, no
  capacity, a user gone while it waited: the tracer is not told which).

The executor side is :meth:`RequestLog.accepted`, told of every receipt this node signs for
a peer's request (``ServeService.on_receipt_issued``): one ``request_accepted`` line each,
free offers included (the tracer sees only this node's own users' requests).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from p2pserve.eventlog import event
from p2pserve.serving.events import Completed, Outcome
from p2pserve.units import credits
from p2pserve.wire.infer import Receipt

__all__ = ["RequestLog"]

log = logging.getLogger("p2pserve.requests")


@dataclass(slots=True)
class _Request:
    model: str
    started: float
    first_text: float | None = None
    attempts: int = 0
    executor: str | None = None
    failed: tuple[str, Outcome, float] | None = None
    """The last executor that refused or failed, its outcome, when (not yet followed by another try)."""
    done: Completed | None = None


class RequestLog:
    """The node's request tracer (see the module docstring). ``me`` is this node's peer ID."""

    def __init__(self, me: str, logger: logging.Logger = log) -> None:
        self.me = me
        self.log = logger
        self._open: dict[str, _Request] = {}

    def running(self) -> int:
        """Requests started and not ended."""
        return len(self._open)

    # --- Tracer -----------------------------------------------------------------------------

    def request_started(self, key: str, model: str, now: float) -> None:
        self._open[key] = _Request(model, now)

    def attempt_started(self, key: str, executor: str, local: bool, now: float) -> None:
        r = self._open.get(key)
        if r is None:
            return
        r.attempts += 1
        if r.failed is not None:
            previous, outcome, at = r.failed
            failed_mid_answer = outcome is Outcome.FAILED
            event(self.log, "request_failover", level=logging.INFO if failed_mid_answer else logging.DEBUG,
                  req=key, model=r.model, **{"from": _where(previous, self.me)}, to=_where(executor, self.me),
                  outcome=outcome, after_s=at - r.started)
            r.failed = None
        r.executor = executor

    def first_text(self, key: str, executor: str, now: float) -> None:
        r = self._open.get(key)
        if r is not None and r.first_text is None:
            r.first_text = now

    def attempt_ended(self, key: str, executor: str, outcome: Outcome, now: float) -> None:
        r = self._open.get(key)
        if r is not None and outcome in (Outcome.REFUSED, Outcome.FAILED, Outcome.CANCELLED):
            r.failed = (executor, outcome, now)

    def request_ended(self, key: str, ok: bool, executor: str | None, now: float) -> None:
        r = self._open.pop(key, None)
        if r is None:
            return
        timing: dict[str, Any] = {"latency_s": now - r.started, "ttft_s": None if r.first_text is None else r.first_text - r.started}
        tries: dict[str, Any] = {"attempts": r.attempts} if r.attempts > 1 else {}
        if ok and executor is not None:
            done = r.done
            usage: dict[str, Any] = {} if done is None else {"tokens_in": done.prompt_tokens, "tokens_out": done.completion_tokens}
            if executor == self.me:
                event(self.log, "request_local", req=key, model=r.model, **timing, **usage, **tries)
            else:
                price = 0 if done is None else sum(rc.price for rc in done.receipts)
                event(self.log, "request_offloaded", req=key, model=r.model, peer=executor, **timing, **usage,
                      price=credits(price), **tries)
            return
        last = r.failed[1] if r.failed is not None else None
        if last is Outcome.CANCELLED:
            event(self.log, "request_cancelled", req=key, model=r.model, **timing, **tries)
        elif r.attempts == 0:  # refused before any executor: unknown model, bad body, no capacity, user gone
            event(self.log, "request_failed", req=key, model=r.model, **timing, attempts=0, outcome="no-executor")
        else:
            event(self.log, "request_failed", level=logging.WARNING, req=key, model=r.model, **timing,
                  attempts=r.attempts, last=_where(r.failed[0], self.me) if r.failed else None, outcome=last)

    # --- the executor side ---------------------------------------------------------------------

    def accepted(self, receipt: Receipt, accepted_at: float, now: float) -> None:
        """The ``request_accepted`` line: a peer's request we served (or the part of it we
        did, ``partial``), from accepting its offer to signing our receipt
        (``ServeService.on_receipt_issued``)."""
        r = receipt
        event(self.log, "request_accepted", requester=r.requester, model=r.model, latency_s=now - accepted_at,
              tokens_in=r.prompt_tokens, tokens_out=r.completion_tokens, price=credits(r.price),
              **({"partial": True} if r.partial else {}))

    # --- the service's completion hook -------------------------------------------------------

    def completed(self, key: str, done: Completed) -> None:
        """Remember a request's tokens and receipts (``ServeService.on_completed``, which
        runs before the request ends)."""
        r = self._open.get(key)
        if r is not None:
            r.done = done


def _where(executor: str, me: str) -> str:
    return "local" if executor == me else executor
