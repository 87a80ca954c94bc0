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
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from p2pserve.backends.base import Backend, Finished, Kind, Load
from p2pserve.errors import BackendError, BackendUnavailable
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
            self.loads.get(name, Load()),
            target,
            conc if conc is not None else backend.max_concurrency,
            self.inflight[name],
        )

    async def read_load(self, name: str) -> Load:
        """Read ``name``'s backend load now (``"unknown"`` if it cannot be read)."""
        try:
            load = await self.backends[name].load()
        except BackendError as exc:
            log.debug("load of %s unreadable: %s", name, exc)
            load = Load(source="unknown")
        self.loads[name] = load
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
            log.warning("backend for model %s is back up: accepting requests for it again", name)
        return True

    def mark_down(self, name: str, reason: str) -> None:
        if name not in self.down:
            log.warning("backend for model %s is down: %s (not serving it until it answers again)", name, reason)
        self.down[name] = reason
        self.loads[name] = Load(source="unknown")  # never idle: policies look elsewhere first

    async def refresh(self) -> None:
        for name in self.backends:
            if await self.check(name):
                await self.read_load(name)

    @contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Count one request running on ``name`` for the duration of the block."""
        self.inflight[name] += 1
        try:
            yield
        finally:
            self.inflight[name] -= 1

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
