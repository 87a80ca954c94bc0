"""The node's own models: their backends, prices and dispatch settings, the loads last read,
and what runs on them. One object shared by the requester side, the executor side and
(later) the judge, instead of callbacks aliased out of the serving service.

Owns: per model, the :class:`~p2pserve.backends.base.Backend`, its price (micro-credits
per 1k output tokens), its :class:`DispatchSettings`, the last :class:`~p2pserve.backends.
base.Load` read (``"unknown"`` when unreadable: never idle), whether its backend is down
(:meth:`LocalModels.check`, with the backend's own error), the requests running on it
(ours and peers'), and our own users' requests still waiting for an executor (the
backlog). Invariants: counts never go negative (``running``/``waiting`` are context
managers); a model is local iff it has a backend; a model whose backend is down is
neither run nor advertised as accepting until a check finds it back.

A load read while a request ran counts that request until the next read (about a second
later): when the request ends first, the load a policy sees (:meth:`LocalModels.view`)
no longer counts it, so a request right after the previous one runs at once instead of
waiting a retry interval behind a busy reading. Each read is numbered; a request that
ended after a read began while it ran is taken off that read's ``running`` (never below
zero; what other clients of the backend run stays counted), and the read's KV-cache
``token_usage``, which cannot be corrected, is dropped until the next read.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from p2pserve.backends.base import Backend, Finished, Kind, Load
from p2pserve.errors import BackendError, BackendUnavailable
from p2pserve.eventlog import event
from p2pserve.policies import LocalModel, Policy
from p2pserve.serving.events import Attempt, Completed, DispatchSettings, Outcome, Progress, ServeEvent, Started
from p2pserve.wire.gossip import ModelStatus

__all__ = ["LocalModels"]

log = logging.getLogger(__name__)


class LocalModels:
    """The node's local models (see the module docstring)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        dispatch: Mapping[str, DispatchSettings] | None = None,
        prices: Mapping[str, int] | None = None,
    ) -> None:
        self.backends = dict(backends)
        self.dispatch = dict(dispatch or {})
        self.prices = {name: 0 for name in self.backends} | dict(prices or {})
        self.loads: dict[str, Load] = {m: Load() for m in self.backends}
        self.inflight: Counter[str] = Counter()
        """Requests running on each local model, ours and peers'."""
        self.waiting: Counter[str] = Counter()
        """Our own users' requests per model not yet placed on an executor."""
        self.down: dict[str, str] = {}
        """Models whose backend failed its last check, with the backend's error."""
        self._reads: Counter[str] = Counter()
        """Load reads begun per model (numbering them: see the module docstring)."""
        self._read_no: Counter[str] = Counter()
        """The number of the read that ``loads`` holds."""
        self._ended: dict[str, list[tuple[int, int]]] = {m: [] for m in self.backends}
        """Requests that ended after a read began while they ran: the reads begun at their
        start and at their end (a read numbered ``n`` counts one iff ``start < n <= end``)."""

    def __contains__(self, model: object) -> bool:
        return model in self.backends

    def names(self) -> list[str]:
        return list(self.backends)

    def price(self, model: str) -> int:
        return self.prices.get(model, 0)

    def backlog(self) -> int:
        """Our own users' requests still waiting for an executor."""
        return sum(self.waiting.values())

    def view(self, name: str) -> LocalModel:
        """What a policy knows about local model ``name``."""
        backend = self.backends[name]
        settings = self.dispatch.get(name)
        target = settings.target_token_usage if settings is not None else 0.6
        conc = settings.max_concurrency if settings is not None else None
        return LocalModel(
            name,
            self.load(name),
            target,
            conc if conc is not None else backend.max_concurrency,
            self.inflight[name],
        )

    def load(self, name: str) -> Load:
        """``name``'s last load read, less the requests it counts that have ended since
        (see the module docstring)."""
        load = self.loads.get(name, Load())
        n = self._read_no[name]
        over = sum(1 for start, end in self._ended.get(name, ()) if start < n <= end)
        if not over:
            return load
        return replace(load, running=max(0, load.running - over), token_usage=None)

    async def read_load(self, name: str) -> Load:
        """Read ``name``'s backend load now (``"unknown"`` if it cannot be read). A read that
        returns after a later-begun one leaves the later one's load in place."""
        self._reads[name] += 1
        n = self._reads[name]
        try:
            load = await self.backends[name].load()
        except BackendError as exc:
            log.debug("load of %s unreadable: %s", name, exc)
            load = Load(source="unknown")
        if n > self._read_no[name]:
            self.loads[name] = load
            self._read_no[name] = n
            # requests that ended before this read began are counted by no read from now on
            self._ended[name] = [(start, end) for start, end in self._ended.get(name, ()) if end >= n]
        return load

    async def check(self, name: str) -> bool:
        """Check ``name``'s backend now; True when it is up. Logs one line when it goes down
        (with its error) and one when it comes back."""
        try:
            await self.backends[name].check()
        except BackendError as exc:
            self.mark_down(name, str(exc))
            return False
        if self.down.pop(name, None) is not None:
            event(log, "backend_up", level=logging.WARNING, model=name)
        return True

    def mark_down(self, name: str, reason: str) -> None:
        """Stop running and advertising ``name`` until a check finds its backend back; logs
        ``backend_down`` when it was up."""
        if name not in self.down:
            event(log, "backend_down", level=logging.WARNING, model=name, reason=reason)
        self.down[name] = reason
        self.loads[name] = Load(source="unknown")  # never idle: policies look elsewhere first

    async def refresh(self) -> None:
        for name in self.backends:
            if await self.check(name):
                await self.read_load(name)

    @contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Count one request running on ``name`` for the duration of the block; at its end,
        the loads read meanwhile stop counting it (module docstring)."""
        start = self._reads[name]
        self.inflight[name] += 1
        try:
            yield
        finally:
            self.inflight[name] -= 1
            end = self._reads[name]
            if end > start:
                self._ended.setdefault(name, []).append((start, end))

    @contextmanager
    def queued(self, name: str) -> Iterator[_Waiting]:
        """Count one of our users' requests for ``name`` as waiting for an executor while it
        is not placed (``placed()`` / ``unplaced()`` as it goes and comes back)."""
        w = _Waiting(self.waiting, name)
        w.unplaced()
        try:
            yield w
        finally:
            w.placed()

    async def run(
        self, model: str, kind: Kind, body: dict[str, Any], progress: Progress, attempt: Attempt, me: str
    ) -> AsyncGenerator[ServeEvent, None]:
        """Run the request on local model ``model`` (continuing ``progress.text``); ends
        ``attempt``. A backend error before any text refuses, after text fails."""
        backend = self.backends[model]
        resumed = bool(progress.delivered)
        if model in self.down:
            outcome = Outcome.FAILED if attempt.sent_text else Outcome.REFUSED
            attempt.end(progress, me, outcome, f"local backend down: {self.down[model]}", exclude=True)
            return
        with self.running(model):
            gen = backend.generate(kind, body, continuation=progress.text)
            finished: Finished | None = None
            try:
                async for ev in gen:
                    if isinstance(ev, Finished):
                        finished = ev
                        break
                    if not ev.text:
                        continue
                    if not attempt.sent_text:
                        yield Started(me, local=True, resumed=resumed)
                    attempt.sent_text.append(ev.text)
                    progress.delivered.append(ev.text)
                    yield ev
            except BackendError as exc:
                if isinstance(exc, BackendUnavailable):
                    self.mark_down(model, str(exc))  # connection refused: no need to wait for the next check
                outcome = Outcome.FAILED if attempt.sent_text else Outcome.REFUSED
                attempt.end(progress, me, outcome, f"local backend: {exc}", exclude=True)
                return
            finally:
                aclose = getattr(gen, "aclose", None)
                if aclose is not None:
                    await aclose()
        if finished is None:
            outcome = Outcome.FAILED if attempt.sent_text else Outcome.REFUSED
            attempt.end(progress, me, outcome, "local backend ended without finishing", exclude=True)
            return
        if not attempt.sent_text:
            yield Started(me, local=True, resumed=resumed)
        attempt.end(progress, me, Outcome.COMPLETED, tokens=finished.completion_tokens)
        attempt.completed = Completed(
            finished.finish_reason, finished.prompt_tokens, progress.completion_tokens, me,
            local=True, receipt=None, receipts=tuple(progress.receipts),
        )

    def model_status(self, policy: Policy) -> tuple[ModelStatus, ...]:
        """One gossip entry per local model, from the last loads read."""
        out = []
        backlog = self.backlog()
        for name, backend in self.backends.items():
            m = self.view(name)
            out.append(
                ModelStatus(
                    name=name,
                    context_length=backend.context_length,
                    price_per_1k=self.price(name),
                    running=max(m.load.running, m.inflight),
                    queued=m.load.queued + self.waiting[name],
                    token_usage=m.load.token_usage,
                    accepting=name not in self.down and policy.accepting(m, backlog),
                )
            )
        return tuple(out)

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()


class _Waiting:
    """One request's place in the backlog count (see :meth:`LocalModels.queued`)."""

    __slots__ = ("_counter", "_name", "_on")

    def __init__(self, counter: Counter[str], name: str) -> None:
        self._counter = counter
        self._name = name
        self._on = False

    def placed(self) -> None:
        if self._on:
            self._on = False
            self._counter[self._name] -= 1

    def unplaced(self) -> None:
        if not self._on:
            self._on = True
            self._counter[self._name] += 1
