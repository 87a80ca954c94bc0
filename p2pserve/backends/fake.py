"""A deterministic fake OpenAI-compatible LLM backend, with a time model and fault injection.

It ships with the product: most tests, the simulator and the benchmarks run against it.
Layers, from pure to I/O:

* **Pure core** (:func:`plan_request`, :func:`response_body`, :func:`stream_chunks`,
  :func:`render_metrics`): a request body becomes a :class:`Plan` (text pieces, one per
  token, finish reason, usage, id) that depends only on the canonical request. Same
  request, byte-identical answer.
* **State** (:class:`FakeBackend`): slots (``max_running``), running/waiting gauges, KV
  tokens in use, counters, and the fault schedule. ``handle()`` turns one HTTP request into
  a :class:`FullReply` or a :class:`StreamReply`; it sleeps on trio's clock, so tests run in
  virtual time (``time_scale=0`` makes every request instant).
* **Adapters**: :meth:`FakeBackend.mock_transport` (an ``httpx.MockTransport`` for unit
  tests), :func:`create_app` (a Starlette ASGI app), :func:`serve_fake_backend` (hypercorn's
  trio worker on a real socket) and ``python -m p2pserve.backends.fake`` (a child process).

Content rule. ``h = sha256(canonical_json({model, messages | prompt, seed}))``; the answer
has ``8 + h[0] % 24`` words taken from :data:`WORDS` by ``h[1:]``, cut to ``max_tokens``
(``finish_reason`` is ``"length"`` when the cut shortened it, else ``"stop"``). A last user
message (or prompt) starting with ``echo:`` is answered with its own text instead.
``max_tokens`` is not hashed, so a shorter request gives a prefix of a longer one, and a
continuation (chat: a final assistant message; completions: the prompt followed by the
first words of its own word answer) yields exactly the rest of the original answer. (A
completions prompt that happens to end in words of :data:`WORDS` is read as a
continuation when they match its base's answer: about 1 chance in 64 per such word.) That makes
mid-stream fail-over testable end to end.

Faults (:data:`FAULTS`) come from an explicit per-request schedule (request index, counted
over generation requests from 0), from :meth:`FakeBackend.inject`, or from a seeded RNG
(``fault_rate``); never from the global RNG.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import httpx
import trio

from p2pserve.backends.base import Kind
from p2pserve.backends.openai_format import (
    chat_messages,
    chunk_object,
    completion_object,
    error_object,
    prompt_text,
    usage,
    usage_chunk,
)
from p2pserve.errors import BadRequest

__all__ = [
    "DIALECTS",
    "Dialect",
    "FAULTS",
    "FakeBackend",
    "FakeConfig",
    "FakeRequestError",
    "FakeServer",
    "Fault",
    "FullReply",
    "Plan",
    "Snapshot",
    "StreamReply",
    "WORDS",
    "create_app",
    "main",
    "plan_request",
    "render_metrics",
    "response_body",
    "serve_fake_backend",
    "stream_chunks",
]

Fault = Literal["http500", "http503", "http429", "stall", "cut", "bad_json", "bad_sse", "wrong_model", "slow"]
FAULTS: tuple[Fault, ...] = get_args(Fault)
Dialect = Literal["vllm", "sglang", "llamacpp", "none"]
DIALECTS: tuple[Dialect, ...] = get_args(Dialect)

WORDS: tuple[str, ...] = tuple(
    """alpha amber apple arrow atlas autumn badge basil beacon birch bloom breeze bridge
    canyon cedar cinder clover comet copper coral cosmos crystal delta dune ember falcon
    fern fjord forest garnet glacier harbor hazel horizon island ivory jasper lagoon
    lantern lotus maple meadow meteor nebula oasis ocean orbit pebble pine prairie quartz
    raven river saffron sierra summit thistle timber tundra valley violet willow yarrow zephyr""".split()
)
assert len(WORDS) == 64

WRONG_MODEL = "wrong-model"
_ECHO = "echo:"
_DEFAULT_MAX_TOKENS = 64
_PIECE_RE = re.compile(r"\s*\S+")


class FakeRequestError(Exception):
    """The request is invalid; answered as an OpenAI-style error with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, not {self.dialect!r}")
        if self.max_running < 1 or self.kv_tokens_total < 1:
            raise ValueError("max_running and kv_tokens_total must be >= 1")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within 0..1")
        for fault in (*self.schedule.values(), *self.faults):
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")


# ----------------------------------------------------------------------------------------
# pure core


@dataclass(frozen=True, slots=True)
class Plan:
    """What one generation request produces. ``pieces`` are the output tokens' texts."""

    kind: Kind
    id: str
    model: str
    pieces: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.completion_tokens)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _words_pieces(digest: bytes, *, leading_space: bool) -> list[str]:
    n = 8 + digest[0] % 24
    words = [WORDS[b % len(WORDS)] for b in digest[1 : 1 + n]]
    return [(" " if (leading_space or i) else "") + w for i, w in enumerate(words)]


def _answer(kind: Kind, model: str, source: object, seed: int) -> list[str]:
    """The full natural answer (as pieces) to ``source`` (messages list or prompt string)."""
    last = source if isinstance(source, str) else _last_user(source)
    if last.lstrip().startswith(_ECHO):
        return _PIECE_RE.findall(last.lstrip()[len(_ECHO):].strip())
    digest = hashlib.sha256(_canonical({"model": model, "input": source, "seed": seed})).digest()
    return _words_pieces(digest, leading_space=kind == "completion")


def _last_user(messages: object) -> str:
    assert isinstance(messages, list)
    for m in reversed(messages):
        if m["role"] == "user":
            return str(m["content"])
    return ""


def _rest_after(pieces: list[str], prefix: str) -> list[str] | None:
    """What of ``pieces`` follows ``prefix``, or None if they do not start with it.

    A prefix that ends inside a piece leaves the rest of that piece as the first one.
    """
    done = 0
    for i, p in enumerate(pieces):
        left = prefix[done:]
        if not left:
            return pieces[i:]
        if left.startswith(p):
            done += len(p)
        elif p.startswith(left):
            return [p[len(left):], *pieces[i + 1 :]]
        else:
            return None
    return [] if done == len(prefix) else None


def _continued(kind: Kind, model: str, source: object, seed: int) -> list[str] | None:
    """The rest of an earlier answer if ``source`` continues it, else None."""
    if kind == "chat":
        assert isinstance(source, list)
        if len(source) < 2 or source[-1]["role"] != "assistant" or not source[-1]["content"]:
            return None
        return _rest_after(_answer(kind, model, source[:-1], seed), source[-1]["content"])
    assert isinstance(source, str)
    for base, tail in _splits(source):
        rest = _rest_after(_answer(kind, model, base, seed), tail)
        if rest is not None:
            return rest
    return None


def _splits(prompt: str) -> list[tuple[str, str]]:
    """Candidate (base, tail) splits of a completions prompt, shortest tail first.

    The tail is 1..31 whole `` word`` pieces from :data:`WORDS` (echo answers are not
    continued for completions: where an echoed prompt ends is ambiguous).
    """
    out: list[tuple[str, str]] = []
    pieces = _PIECE_RE.findall(prompt[-32 * 16 :])
    tail = ""
    for piece in reversed(pieces[1:][-31:]):
        if piece[:1] != " " or piece[1:2].isspace() or piece[1:] not in WORDS:
            break
        tail = piece + tail
        out.append((prompt[: len(prompt) - len(tail)], tail))
    return out


def _count_words(source: object) -> int:
    if isinstance(source, str):
        return len(source.split())
    assert isinstance(source, list)
    return sum(len(m["content"].split()) for m in source)


def plan_request(kind: Kind, body: Mapping[str, Any], *, model: str, seed: int = 0) -> Plan:
    """The deterministic answer to one request body (see the module docstring).

    Raises :class:`FakeRequestError` (400) for an invalid body and (404) for another model.
    """
    if body.get("model", model) != model:
        raise FakeRequestError(404, f"The model `{body.get('model')}` does not exist.")
    try:
        source: object = chat_messages(body) if kind == "chat" else prompt_text(body)
    except BadRequest as exc:
        raise FakeRequestError(400, str(exc)) from exc
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", _DEFAULT_MAX_TOKENS))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise FakeRequestError(400, "'max_tokens' must be a positive integer")
    req_seed = body.get("seed", seed)
    if not isinstance(req_seed, int) or isinstance(req_seed, bool):
        raise FakeRequestError(400, "'seed' must be an integer")
    rest = _continued(kind, model, source, req_seed)
    if rest is None:
        rest = _answer(kind, model, source, req_seed)
    pieces = rest[:max_tokens]
    finish = "length" if len(rest) > max_tokens else "stop"
    digest = hashlib.sha256(_canonical({"kind": kind, "body": dict(body)})).hexdigest()
    stream_options = body.get("stream_options")
    return Plan(
        kind=kind,
        id=("chatcmpl-" if kind == "chat" else "cmpl-") + digest[:24],
        model=model,
        pieces=tuple(pieces),
        finish_reason=finish,
        prompt_tokens=_count_words(source),
        stream=bool(body.get("stream", False)),
        include_usage=isinstance(stream_options, dict) and bool(stream_options.get("include_usage")),
    )


def response_body(plan: Plan, *, created: int = 0, model: str | None = None) -> dict[str, Any]:
    """The non-streaming OpenAI response for ``plan`` (``model`` overrides the reported name)."""
    return completion_object(plan.kind, plan.id, created, model or plan.model, plan.text, plan.finish_reason, plan.usage())


def stream_chunks(plan: Plan, *, created: int = 0, model: str | None = None) -> list[dict[str, Any]]:
    """The SSE chunk objects for ``plan``, in order, without the final ``[DONE]``.

    Chat: a role chunk, one chunk per piece, a chunk with ``finish_reason``. Completions: one
    chunk per piece, then the ``finish_reason`` chunk. Then a usage chunk (empty
    ``choices``) when ``stream_options.include_usage`` was asked for, as vLLM sends it.
    """
    head = (plan.kind, plan.id, created, model or plan.model)
    chunks = [chunk_object(*head, text="", role=True)] if plan.kind == "chat" else []
    chunks += [chunk_object(*head, text=p) for p in plan.pieces]
    chunks.append(chunk_object(*head, finish=plan.finish_reason))
    if plan.include_usage:
        chunks.append(usage_chunk(*head, plan.usage()))
    return chunks


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fake's gauges and counters at one moment."""

    running: int = 0
    waiting: int = 0
    kv_tokens: int = 0
    kv_tokens_total: int = 1
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_total: int = 0

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_tokens / self.kv_tokens_total)


def render_metrics(dialect: Dialect, model: str, snap: Snapshot) -> str:
    """``/metrics`` text in ``dialect``'s names (see research/backends.md §6)."""
    if dialect == "vllm":
        labels = f'{{model_name="{model}",engine="0"}}'
        rows = [("vllm:num_requests_running", "gauge", snap.running),
                ("vllm:num_requests_waiting", "gauge", snap.waiting),
                ("vllm:kv_cache_usage_perc", "gauge", snap.kv_usage),
                ("vllm:prompt_tokens_total", "counter", snap.prompt_tokens_total),
                ("vllm:generation_tokens_total", "counter", snap.generation_tokens_total)]
    elif dialect == "sglang":
        labels = f'{{model_name="{model}"}}'
        rows = [("sglang:num_running_reqs", "gauge", snap.running),
                ("sglang:num_queue_reqs", "gauge", snap.waiting),
                ("sglang:token_usage", "gauge", snap.kv_usage),
                ("sglang:num_used_tokens", "gauge", snap.kv_tokens),
                ("sglang:prompt_tokens_total", "counter", snap.prompt_tokens_total),
                ("sglang:generation_tokens_total", "counter", snap.generation_tokens_total)]
    elif dialect == "llamacpp":
        labels = ""
        rows = [("llamacpp:requests_processing", "gauge", snap.running),
                ("llamacpp:requests_deferred", "gauge", snap.waiting),
                ("llamacpp:prompt_tokens_total", "counter", snap.prompt_tokens_total),
                ("llamacpp:tokens_predicted_total", "counter", snap.generation_tokens_total)]
    else:
        return ""
    lines: list[str] = []
    for name, kind, value in rows:
        family = name.removesuffix("_total") if kind == "counter" else name
        lines += [f"# TYPE {family} {kind}", f"{name}{labels} {float(value)!r}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# state and request handling


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
            plan = plan_request(kind, body, model=self.config.model, seed=self.config.seed)
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

    # -- adapters ---------------------------------------------------------------------------

    async def handle_httpx(self, request: httpx.Request) -> httpx.Response:
        """An async handler for ``httpx.MockTransport``: the same answers, no socket.

        A cut surfaces as ``httpx.RemoteProtocolError``, as httpx reports a real one.
        """
        reply = await self.handle(request.method, request.url.path, await request.aread())
        if isinstance(reply, FullReply):
            return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body)
        return httpx.Response(reply.status, headers=list(reply.headers), stream=_CutAsHttpx(reply.chunks))

    def mock_transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle_httpx)


class _CutAsHttpx(httpx.AsyncByteStream):
    """A streamed body for MockTransport that reports a cut as httpx does, and closes early.

    An iterator object rather than an async generator, so an early close leaves no
    suspended generator behind for trio to warn about.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except _Cut:
            await self.aclose()
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body") from None

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


# ----------------------------------------------------------------------------------------
# ASGI app and real server


def create_app(fake: FakeBackend) -> Any:
    """A Starlette ASGI app that serves ``fake`` (routes: see :meth:`FakeBackend.handle`).

    A cut is an exception out of the app after part of the body: the server then drops the
    connection without finishing the chunked body, as a crashed backend would.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    class ClosingStreamingResponse(StreamingResponse):
        """Closes the body generator even when the client goes away mid-stream."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True):
                        await aclose()

    async def endpoint(request: Request) -> Response:
        reply = await fake.handle(request.method, request.url.path, await request.body())
        if isinstance(reply, FullReply):
            return Response(reply.body, status_code=reply.status, headers=dict(reply.headers))
        return ClosingStreamingResponse(reply.chunks, status_code=reply.status, headers=dict(reply.headers))

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


@dataclass(frozen=True, slots=True)
class FakeServer:
    """A running fake HTTP server: its root URL and its state (inject faults, read gauges)."""

    base_url: str
    port: int
    backend: FakeBackend


async def serve_fake_backend(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[FakeServer] = trio.TASK_STATUS_IGNORED,
    config: FakeConfig | None = None,
    **opts: Any,
) -> None:
    """Serve a fake backend over HTTP/1.1 with hypercorn's trio worker until cancelled.

    Use with ``server = await nursery.start(serve_fake_backend)``; ``opts`` are
    :class:`FakeConfig` fields. Reports the bound port (useful with ``port=0``).
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    fake = FakeBackend(config, **opts)
    hconfig = Config()
    hconfig.bind = [f"{host}:{port}"]
    hconfig.accesslog = None
    hconfig.errorlog = None
    hconfig.graceful_timeout = 0.5
    hconfig.keep_alive_timeout = 60.0
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, create_app(fake), hconfig)
        bound_port = int(binds[0].rsplit(":", 1)[1])
        base_url = f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}"
        task_status.started(FakeServer(base_url, bound_port, fake))


def _parse_schedule(text: str) -> dict[int, Fault]:
    out: dict[int, Fault] = {}
    for item in filter(None, text.split(",")):
        index, _, fault = item.partition("=")
        if fault not in FAULTS:
            raise argparse.ArgumentTypeError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        out[int(index)] = fault
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m p2pserve.backends.fake``: serve a fake backend until killed.

    Prints ``listening on http://HOST:PORT`` (flushed) once bound, so a parent process
    started with ``--port 0`` can read the port from the first line of stdout.
    """
    p = argparse.ArgumentParser(prog="python -m p2pserve.backends.fake", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--model", default="fake")
    p.add_argument("--dialect", choices=DIALECTS, default="vllm")
    p.add_argument("--ttft", type=float, default=0.0, help="time to first token, seconds")
    p.add_argument("--tpot", type=float, default=0.0, help="time per output token, seconds")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--max-running", type=int, default=8)
    p.add_argument("--kv-tokens", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument("--schedule", type=_parse_schedule, default={}, help="e.g. 0=http500,3=cut")
    p.add_argument("--stall", type=float, default=3600.0)
    args = p.parse_args(argv)
    config = FakeConfig(
        model=args.model, dialect=args.dialect, ttft_s=args.ttft, tpot_s=args.tpot,
        time_scale=args.time_scale, max_running=args.max_running, kv_tokens_total=args.kv_tokens,
        seed=args.seed, fault_rate=args.fault_rate, fault_seed=args.fault_seed,
        schedule=args.schedule, stall_s=args.stall,
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            server: FakeServer = await nursery.start(
                lambda task_status: serve_fake_backend(args.host, args.port, config=config, task_status=task_status))
            print(f"listening on {server.base_url}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
    sys.exit(0)
