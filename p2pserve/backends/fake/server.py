"""The fake backend's state: slots, gauges, counters, the time model and the fault schedule.

:class:`FakeBackend` is one fake server. :meth:`FakeBackend.handle` is its whole HTTP
surface: one request (method, path, body) becomes a :class:`FullReply` or a
:class:`StreamReply` whose chunks come on the time model's schedule (``ttft_s``, ``tpot_s``,
``time_scale``; ``time_scale=0`` makes every request instant). It sleeps on trio's clock,
so tests run in virtual time. Content comes from :mod:`.plan`; sockets and HTTP libraries
are :mod:`.adapters`' business.

Faults (:data:`FAULTS`) come from an explicit per-request schedule (request index, counted
over generation requests from 0), from :meth:`FakeBackend.inject`, or from a seeded RNG
(``fault_rate``); never from the global RNG.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

import trio

from p2pserve.backends.base import Kind
from p2pserve.backends.fake.plan import (
    ANSWERS,
    DIALECTS,
    Answers,
    Dialect,
    FakeRequestError,
    Plan,
    Snapshot,
    plan_request,
    render_metrics,
    response_body,
    stream_chunks,
)
from p2pserve.backends.openai_format import error_object

if TYPE_CHECKING:
    import httpx

__all__ = ["FAULTS", "WRONG_MODEL", "FakeBackend", "FakeConfig", "Fault", "FullReply", "StreamReply"]

Fault = Literal["http500", "http503", "http429", "stall", "cut", "bad_json", "bad_sse", "wrong_model", "slow"]
FAULTS: tuple[Fault, ...] = get_args(Fault)

WRONG_MODEL = "wrong-model"
"""The model name a ``wrong_model`` fault reports."""


@dataclass(frozen=True, slots=True)
class FakeConfig:
    """Everything a fake backend does, fixed at start."""

    model: str = "fake"
    """The one model it serves; requests naming another get 404."""
    dialect: Dialect = "vllm"
    """Which ``/metrics`` names to export (``"none"``: ``/metrics`` is 404)."""
    ttft_s: float = 0.0
    """Time to first token once a slot is held (scaled by ``time_scale``)."""
    tpot_s: float = 0.0
    """Time per further output token (scaled by ``time_scale``)."""
    time_scale: float = 1.0
    max_running: int = 8
    """Slots: requests beyond this wait (they show as waiting/queued in the metrics)."""
    kv_tokens_total: int = 65536
    """KV capacity: usage = Σ(prompt + generated tokens of running requests) / this."""
    seed: int = 0
    """Content seed used when the request has no ``seed``."""
    schedule: Mapping[int, Fault] = field(default_factory=dict)
    """Faults by generation-request index (0-based)."""
    fault_rate: float = 0.0
    """Probability that an unscheduled request gets a fault drawn from ``faults``."""
    faults: tuple[Fault, ...] = FAULTS
    fault_seed: int = 0
    stall_s: float = 3600.0
    """How long a ``stall`` waits before the first byte (not scaled)."""
    slow_factor: float = 10.0
    """How much slower a ``slow`` request is."""
    cut_after: int = 2
    """Stream chunks sent before a ``cut`` (or a malformed line) happens."""
    created: int = 1_700_000_000
    answers: Answers = "words"
    """``words``: the deterministic answer of the content rule; ``noise``: words unrelated to
    the prompt (a bad model, for duels)."""

    def __post_init__(self) -> None:
        if self.answers not in ANSWERS:
            raise ValueError(f"answers must be one of {ANSWERS}, not {self.answers!r}")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, not {self.dialect!r}")
        if self.max_running < 1 or self.kv_tokens_total < 1:
            raise ValueError("max_running and kv_tokens_total must be >= 1")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within 0..1")
        for fault in (*self.schedule.values(), *self.faults):
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")


@dataclass(frozen=True, slots=True)
class FullReply:
    """A complete HTTP answer."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class StreamReply:
    """An HTTP answer whose body arrives in pieces; ``chunks`` raises :class:`_Cut` to cut it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: AsyncIterator[bytes]


class _Cut(Exception):
    """The fake drops the connection here (the adapters turn this into a real cut)."""


_JSON = (("content-type", "application/json"),)
_SSE = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))


def _json_reply(status: int, obj: object, extra: tuple[tuple[str, str], ...] = ()) -> FullReply:
    return FullReply(status, _JSON + extra, json.dumps(obj).encode())


def _error_reply(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> FullReply:
    kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(status, "InternalServerError")
    return _json_reply(status, error_object(message, kind, status), extra)


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class FakeBackend:
    """One fake server's state: slots, gauges, counters and faults. Create one per server.

    Not thread-safe; use from one trio run. ``handle`` is the whole HTTP surface.
    """

    def __init__(self, config: FakeConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or FakeConfig(), **overrides)
        self._slots = trio.Semaphore(self.config.max_running)
        self._rng = random.Random(self.config.fault_seed)
        self._injected: list[Fault] = []
        self._running = 0
        self._waiting = 0
        self._kv_tokens = 0
        self._prompt_total = 0
        self._gen_total = 0
        self.requests_total = 0
        """Generation requests received so far (the next one's schedule index)."""
        self.faults_applied: list[tuple[int, Fault]] = []

    # -- control -------------------------------------------------------------------------

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` generation requests (before any schedule)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self._injected.extend([fault] * times)

    def snapshot(self) -> Snapshot:
        return Snapshot(self._running, self._waiting, self._kv_tokens, self.config.kv_tokens_total,
                        self._prompt_total, self._gen_total, self.requests_total)

    def metrics_text(self) -> str:
        return render_metrics(self.config.dialect, self.config.model, self.snapshot())

    def _next_fault(self, index: int) -> Fault | None:
        if self._injected:
            return self._injected.pop(0)
        if index in self.config.schedule:
            return self.config.schedule[index]
        if self.config.fault_rate and self._rng.random() < self.config.fault_rate:
            return self._rng.choice(self.config.faults)
        return None

    # -- HTTP ------------------------------------------------------------------------------

    async def handle(self, method: str, path: str, body: bytes) -> FullReply | StreamReply:
        """Answer one HTTP request (path without query string)."""
        path = path.rstrip("/") or "/"
        if method == "GET" and path == "/health":
            return FullReply(200, (), b"")
        if method == "GET" and path == "/metrics":
            if self.config.dialect == "none":
                return FullReply(404, (("content-type", "text/plain"),), b"Not Found")
            return FullReply(200, (("content-type", "text/plain; version=0.0.4"),), self.metrics_text().encode())
        if method == "GET" and path == "/v1/models":
            return _json_reply(200, {"object": "list", "data": [
                {"id": self.config.model, "object": "model", "created": 0, "owned_by": "fake"}]})
        kind: Kind | None = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}.get(path)  # type: ignore[assignment]
        if kind is None:
            return _error_reply(404, f"no route {path}")
        if method != "POST":
            return _error_reply(405, "method not allowed")
        return await self._generate(kind, body)

    async def _generate(self, kind: Kind, raw: bytes) -> FullReply | StreamReply:
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise FakeRequestError(400, "the body must be a JSON object")
            plan = plan_request(kind, body, model=self.config.model, seed=self.config.seed, answers=self.config.answers)
        except json.JSONDecodeError:
            return _error_reply(400, "the body is not JSON")
        except FakeRequestError as exc:
            return _error_reply(exc.status, exc.message)
        index = self.requests_total
        self.requests_total += 1
        fault = self._next_fault(index)
        if fault is not None:
            self.faults_applied.append((index, fault))
        if fault == "http500":
            return _error_reply(500, "injected internal error")
        if fault == "http503":
            return _error_reply(503, "injected: service unavailable")
        if fault == "http429":
            return _error_reply(429, "injected: too many requests", (("retry-after", "1"),))
        if fault == "stall":
            await trio.sleep(self.config.stall_s)
        chunks = self._run(plan, fault)
        if plan.stream:
            return StreamReply(200, _SSE, chunks)
        if fault in ("cut", "bad_json", "bad_sse"):
            return StreamReply(200, _JSON, self._broken_body(chunks, fault))
        async for _ in chunks:
            pass
        model = WRONG_MODEL if fault == "wrong_model" else None
        return _json_reply(200, response_body(plan, created=self.config.created, model=model))

    async def _broken_body(self, chunks: AsyncIterator[bytes], fault: Fault | None) -> AsyncIterator[bytes]:
        async for _ in chunks:
            pass
        yield b'{"id": "cmpl-broken", "choices": [{"index": 0, "te'
        if fault == "cut":
            raise _Cut

    async def _run(self, plan: Plan, fault: Fault | None) -> AsyncIterator[bytes]:
        """Wait for a slot, then produce the SSE bytes on the time model's schedule."""
        cfg = self.config
        scale = cfg.time_scale * (cfg.slow_factor if fault == "slow" else 1.0)
        model = WRONG_MODEL if fault == "wrong_model" else None
        chunks = stream_chunks(plan, created=cfg.created, model=model)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        held = plan.prompt_tokens
        self._running += 1
        self._kv_tokens += held
        self._prompt_total += plan.prompt_tokens
        first = True
        try:
            if cfg.ttft_s * scale > 0:
                await trio.sleep(cfg.ttft_s * scale)
            for i, chunk in enumerate(chunks):
                if i == cfg.cut_after and fault in ("cut", "bad_json", "bad_sse"):
                    if fault == "bad_json":
                        yield b'data: {"id": "broken", "choices": [\n\n'
                    elif fault == "bad_sse":
                        yield b"this is not an SSE line\n\n"
                    else:
                        raise _Cut
                content = bool(chunk["choices"]) and chunk["choices"][0].get("finish_reason") is None and (
                    chunk["choices"][0].get("text") or chunk["choices"][0].get("delta", {}).get("content"))
                if content:
                    if not first and cfg.tpot_s * scale > 0:
                        await trio.sleep(cfg.tpot_s * scale)
                    first = False
                    held += 1
                    self._kv_tokens += 1
                    self._gen_total += 1
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"
        finally:
            self._kv_tokens -= held
            self._running -= 1
            self._slots.release()

    # -- adapters (see .adapters) ---------------------------------------------------------

    async def handle_httpx(self, request: httpx.Request) -> httpx.Response:
        """An async handler for ``httpx.MockTransport``: the same answers, no socket.

        A cut surfaces as ``httpx.RemoteProtocolError``, as httpx reports a real one.
        """
        from p2pserve.backends.fake.adapters import handle_httpx

        return await handle_httpx(self, request)

    def mock_transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` answering with this fake (give it to an httpx client)."""
        from p2pserve.backends.fake.adapters import mock_transport

        return mock_transport(self)
