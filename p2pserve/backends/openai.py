"""The client for any OpenAI-compatible server: vLLM, SGLang, llama.cpp, Ollama, the fake.

This module owns :class:`OpenAIBackend` (the :class:`~p2pserve.backends.base.Backend` over
an :class:`~p2pserve.backends.http.HTTPClient`: the lean :class:`~.h11client.H11Client` for
real servers, an httpx transport when one is injected, e.g. the fake's ``MockTransport``).
Its other helper, :mod:`.sse`, decodes the event stream (sans-IO).

Invariants:

* ``generate()`` always streams from the server (``"stream": true`` with
  ``stream_options.include_usage``), whatever the caller asked, and yields ``TextDelta``
  events then exactly one ``Finished``.
* No HTTP client exception escapes: connect failures and resets before an answer become
  :class:`~p2pserve.errors.BackendUnavailable`, deadlines :class:`BackendTimeout`, and
  everything else (non-2xx, bad JSON, bad SSE, a stream cut mid-way, another model in the
  reply) :class:`BackendResponseError`, chained with ``raise ... from exc``.
* Deadlines run on trio's clock (``trio.fail_after``), never across a ``yield``.
* SSE decoding is independent of how the bytes are split into chunks.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import trio

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, TextDelta
from p2pserve.backends.h11client import H11Client
from p2pserve.backends.http import HTTPClient, HTTPError, HTTPResponse, HTTPTimeout, HTTPUnreachable, HttpxClient
from p2pserve.backends.metrics import load_from_metrics
from p2pserve.backends.sse import SSEDecoder
from p2pserve.errors import BackendError, BackendResponseError, BackendTimeout, BackendUnavailable, map_exceptions

__all__ = ["MetricsMode", "OpenAIBackend", "Timeouts", "approx_tokens"]

MetricsMode = Literal["auto", "off"]

_CLOSE_GRACE_S = 2.0
_DRAIN_S = 1.0
_DRAIN_BYTES = 64 * 1024
_METRICS_BYTES = 8 * 1024 * 1024
"""Largest ``/metrics`` page read (vLLM's is ~100 KB; a longer one is cut)."""


def approx_tokens(text: str) -> int:
    """A token count for backends that report no usage: ~4 characters per token."""
    return math.ceil(len(text) / 4) if text else 0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines, in seconds, on trio's clock. ``None`` disables one."""

    connect: float | None = 10.0
    """Establishing the TCP connection."""
    first_byte: float | None = 60.0
    """From sending the request to the response headers (queueing + prefill)."""
    read: float | None = 60.0
    """Between two reads of the streamed body."""
    total: float | None = 600.0
    """The whole request."""
    metrics: float = 2.0
    """One ``/metrics`` scrape."""


def _deadline_in(limit: float | None, deadline: float) -> float:
    remaining = deadline - trio.current_time()
    return remaining if limit is None else min(limit, remaining)


@dataclass(slots=True)
class _StreamState:
    """What one streamed answer has said so far."""

    finish: str | None = None
    usage: tuple[int, int] | None = None
    done: bool = False
    """``[DONE]`` seen."""
    pieces: int = 0
    """Text events seen (the completion tokens when the backend reports no usage)."""


class OpenAIBackend(Backend):
    """One model on one OpenAI-compatible server, reached over HTTP.

    ``model`` is the network's name; ``served_model`` (default: ``model``) is the name sent
    to the server, and a reply naming another model is an error when ``check_model``.
    ``base_url`` is the server root: requests go to ``{base_url}/v1/...`` and metrics to
    ``{base_url}/metrics`` (a trailing ``/v1`` is tolerated). ``gen_params`` fill in keys the
    request body lacks (``max_tokens``, ``temperature``, ``top_p``, ...).

    Load: ``metrics="auto"`` scrapes ``/metrics`` (cached ``metrics_ttl`` seconds); a 404
    there means the server has none, and from then on load is this client's own in-flight
    count (``source="inflight"``), as it is with ``metrics="off"``. A scrape that fails
    otherwise gives ``Load(source="unknown")``.

    Continuation: completions send ``prompt + continuation``; chat appends the continuation
    as a final assistant message and, when ``continue_final_message`` (vLLM, SGLang), asks
    the server to continue it (``continue_final_message: true, add_generation_prompt:
    false``). llama-server and Ollama continue a final assistant message without the flag.
    Only the new text is yielded and counted; ``max_tokens`` bounds the new text, so a
    caller continuing a stream lowers it by the tokens already delivered.

    Early exit: close the iteration (``async with aclosing(...)``); the HTTP request is then
    closed, which aborts it on vLLM/SGLang.
    """

    supports_continuation = True
    load_over_network = True

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        served_model: str | None = None,
        api_key: str | None = None,
        gen_params: Mapping[str, Any] | None = None,
        timeouts: Timeouts = Timeouts(),
        max_connections: int = 64,
        max_keepalive_connections: int | None = None,
        max_concurrency: int = 1,
        context_length: int = 8192,
        metrics: MetricsMode = "auto",
        metrics_ttl: float = 0.5,
        continue_final_message: bool = True,
        check_model: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if metrics not in ("auto", "off"):
            raise ValueError(f"metrics must be 'auto' or 'off', not {metrics!r}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        root = base_url.rstrip("/")
        self.model = model
        self.served_model = served_model or model
        self.base_url = root.removesuffix("/v1")
        self.gen_params = dict(gen_params or {})
        self.timeouts = timeouts
        self.max_concurrency = max_concurrency
        self.context_length = context_length
        self.metrics_mode: MetricsMode = metrics
        self.metrics_ttl = metrics_ttl
        self.continue_final_message = continue_final_message
        self.check_model = check_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Only connect is left to the client: every other wait runs under a trio deadline here.
        self._http: HTTPClient = (
            HttpxClient(self.base_url, transport, headers, timeouts.connect) if transport is not None
            else H11Client(self.base_url, headers=headers, connect_timeout=timeouts.connect,
                           max_connections=max_connections, max_keepalive=max_keepalive_connections)
        )
        self._inflight = 0
        self._has_metrics: bool | None = None if metrics == "auto" else False
        self._cached: Load | None = None
        self._cached_at = -math.inf
        self._scrape_lock = trio.Lock()
        self._checked_at = -math.inf
        self._check_error: BackendError | None = None
        self._closed = False

    # -- request shaping (pure) ------------------------------------------------------------

    def build_body(self, kind: Kind, body: Mapping[str, Any], continuation: str = "") -> dict[str, Any]:
        """The body sent to the server for ``body`` (+ ``continuation``)."""
        out = dict(body)
        for key, value in self.gen_params.items():
            out.setdefault(key, value)
        out["model"] = self.served_model
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
        out.pop("n", None)
        if continuation:
            if kind == "completion":
                prompt = out.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1:
                    prompt = prompt[0]
                if not isinstance(prompt, str):
                    raise BackendResponseError("continuation needs a text prompt")
                out["prompt"] = prompt + continuation
            else:
                out["messages"] = [*out.get("messages", []), {"role": "assistant", "content": continuation}]
                if self.continue_final_message:
                    out["continue_final_message"] = True
                    out["add_generation_prompt"] = False
        return out

    # -- generation --------------------------------------------------------------------------

    async def generate(
        self, kind: Kind, body: dict[str, Any], *, continuation: str = ""
    ) -> AsyncIterator[GenerationEvent]:
        sent = self.build_body(kind, body, continuation)
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        deadline = trio.current_time() + (self.timeouts.total if self.timeouts.total is not None else math.inf)
        self._inflight += 1
        try:
            response = await self._open(path, sent, deadline)
            try:
                async with aclosing(self._events(kind, response, sent, deadline)) as events:
                    async for event in events:
                        yield event
            finally:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_GRACE_S):
                    await response.aclose()
        finally:
            self._inflight -= 1

    async def _open(self, path: str, sent: dict[str, Any], deadline: float) -> HTTPResponse:
        """Send the request; the response once its head arrived and was 2xx."""
        limit = _deadline_in(self.timeouts.first_byte, deadline)
        body = json.dumps(sent, separators=(",", ":"), ensure_ascii=False).encode()

        def unreachable(exc: Exception) -> BackendUnavailable:
            return BackendUnavailable(f"backend at {self.base_url} unreachable: {exc}")

        errors = map_exceptions({
            trio.TooSlowError: lambda exc: BackendTimeout(f"backend sent no answer within {limit:.1f} s"),
            HTTPTimeout: lambda exc: BackendTimeout(f"backend timed out: {exc}"),
            HTTPUnreachable: unreachable,
            HTTPError: lambda exc: BackendResponseError(f"backend request failed: {exc}"),
        })
        with errors, trio.fail_after(max(limit, 0.0)):
            response = await self._http.request("POST", path, body=body, headers=_SSE_HEADERS)
            if response.status >= 300:
                try:
                    detail = (await response.aread(500)).decode("utf-8", "replace")
                finally:
                    await response.aclose()
                raise BackendResponseError(f"backend answered HTTP {response.status}: {detail}",
                                           status_code=response.status)
        return response

    async def _events(
        self, kind: Kind, response: HTTPResponse, sent: dict[str, Any], deadline: float
    ) -> AsyncGenerator[GenerationEvent, None]:
        status = response.status
        decoder = SSEDecoder()
        state = _StreamState()
        while not state.done:
            limit = _deadline_in(self.timeouts.read, deadline)
            raw: bytes | None = None
            try:
                # a bare CancelScope: fail_after's generator context manager costs more
                # than the read itself on a fast backend
                with trio.CancelScope(deadline=trio.current_time() + max(limit, 0.0)) as scope:
                    raw = await response.next_chunk()
                if scope.cancelled_caught:
                    raise BackendTimeout(f"backend stalled for {limit:.1f} s mid-stream")
            except HTTPError as exc:
                raise BackendResponseError(f"backend stream broke: {exc}", status_code=status) from exc
            try:
                payloads = decoder.close() if raw is None else decoder.feed(raw)
            except BackendResponseError as exc:
                raise BackendResponseError(str(exc), status_code=status) from exc
            # one TextDelta per event: callers count them as tokens (partial receipts, the
            # tokens a continuation elsewhere may still generate), so they are not merged;
            # all but the last of one read say ``more`` (a writer may hold them for it)
            deltas, bad = self._take(kind, payloads, status, state)
            last = len(deltas) - 1
            for i, delta in enumerate(deltas):
                yield TextDelta(delta, more=i < last)
            if bad is not None:  # after the good deltas before it: they were generated
                raise bad
            if raw is None and not state.done:
                if state.finish is None:
                    raise BackendResponseError("backend stream ended before the answer finished", status_code=status)
                state.done = True  # finished; tolerate a missing [DONE]
            elif raw is not None and state.done:
                await _drain(response)
        if state.finish is None:
            raise BackendResponseError("backend stream ended without a finish_reason", status_code=status)
        usage = state.usage if state.usage is not None else (_prompt_tokens(kind, sent), state.pieces)
        yield Finished(finish_reason=state.finish, prompt_tokens=usage[0], completion_tokens=usage[1])

    def _take(
        self, kind: Kind, payloads: list[str], status: int, state: _StreamState
    ) -> tuple[list[str], BackendResponseError | None]:
        """The texts of one read's SSE events (noting finish, usage and ``[DONE]`` in
        ``state``), and the error of the first bad event, which ends them."""
        deltas: list[str] = []
        try:
            for payload in payloads:
                if payload.strip() == "[DONE]":
                    state.done = True
                    break
                delta, finish, usage = _read_chunk(kind, self._parse_chunk(payload, status), status)
                state.usage = usage or state.usage
                state.finish = finish or state.finish
                if delta:
                    deltas.append(delta)
        except BackendResponseError as exc:
            return deltas, exc
        finally:
            state.pieces += len(deltas)
        return deltas, None

    def _parse_chunk(self, payload: str, status: int) -> dict[str, Any]:
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise BackendResponseError(f"backend sent malformed JSON: {payload[:80]!r}", status_code=status) from exc
        if not isinstance(chunk, dict):
            raise BackendResponseError("backend sent a chunk that is not an object", status_code=status)
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            code = err.get("code") if isinstance(err, dict) else None
            raise BackendResponseError(f"backend error mid-stream: {message}",
                                       status_code=code if isinstance(code, int) else status)
        reported = chunk.get("model")
        if self.check_model and reported is not None and reported != self.served_model:
            raise BackendResponseError(
                f"backend answered as model {reported!r}, expected {self.served_model!r}", status_code=status
            )
        return chunk

    # -- load --------------------------------------------------------------------------------

    def _inflight_load(self) -> Load:
        return Load(
            running=min(self._inflight, self.max_concurrency),
            queued=max(0, self._inflight - self.max_concurrency),
            source="inflight",
        )

    async def load(self) -> Load:
        if self._has_metrics is False:
            return self._inflight_load()
        async with self._scrape_lock:
            now = trio.current_time()
            if self._cached is not None and now - self._cached_at < self.metrics_ttl:
                return self._cached
            load = await self._scrape()
            self._cached, self._cached_at = load, trio.current_time()
            return load

    async def _get(self, path: str, limit: int) -> tuple[int, bytes]:
        """(status, body up to ``limit`` bytes) of ``GET path`` within the metrics timeout;
        TooSlowError or HTTPError."""
        with trio.fail_after(self.timeouts.metrics):
            response = await self._http.request("GET", path)
            try:
                return response.status, await response.aread(limit)
            finally:
                await response.aclose()

    async def _scrape(self) -> Load:
        try:
            status, body = await self._get("/metrics", _METRICS_BYTES)
        except (trio.TooSlowError, HTTPError):
            return Load(source="unknown")
        if status == 404 and self._has_metrics is None:
            self._has_metrics = False
            return self._inflight_load()
        if status != 200:
            return Load(source="unknown")
        load = load_from_metrics(body.decode("utf-8", "replace"))
        if load is None:
            # /metrics exists but speaks none of the known dialects: our own count is the truth.
            return self._inflight_load()
        self._has_metrics = True
        return load

    async def check(self) -> None:
        """Raise BackendUnavailable/BackendResponseError unless the server answers now: a
        fresh metrics scrape counts; else ``GET /v1/models`` (cached ``metrics_ttl``, at
        least 1 s)."""
        now = trio.current_time()
        if self._cached is not None and self._cached.known and now - self._cached_at < self.metrics_ttl:
            return
        if now - self._checked_at >= max(self.metrics_ttl, 1.0):
            self._check_error = await self._probe()
            self._checked_at = trio.current_time()
        if self._check_error is not None:
            raise self._check_error

    async def _probe(self) -> BackendError | None:
        try:
            status, _ = await self._get("/v1/models", 1024 * 1024)
        except trio.TooSlowError:
            return BackendUnavailable(f"backend at {self.base_url} did not answer GET /v1/models within {self.timeouts.metrics:.1f} s")
        except HTTPError as exc:
            return BackendUnavailable(f"backend at {self.base_url} unreachable: {exc}")
        if status in (401, 403):
            return BackendResponseError(f"backend at {self.base_url} refused our key (HTTP {status}): check models[].api_key",
                                        status_code=status)
        if status >= 500:
            return BackendResponseError(f"backend at {self.base_url} answered HTTP {status}", status_code=status)
        return None

    @property
    def inflight(self) -> int:
        """Requests this client has open to the server right now."""
        return self._inflight

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._http.aclose()


async def _drain(response: HTTPResponse) -> None:
    """Read to the end of a body after ``[DONE]`` (briefly, boundedly), so the connection
    ends its exchange cleanly and can be reused; servers end the body right after ``[DONE]``."""
    extra = 0
    with trio.move_on_after(_DRAIN_S):
        try:
            while (rest := await response.next_chunk()) is not None:
                extra += len(rest)
                if extra > _DRAIN_BYTES:
                    return
        except HTTPError:
            return


_SSE_HEADERS = {"Accept": "text/event-stream"}


def _read_chunk(kind: Kind, chunk: dict[str, Any], status: int) -> tuple[str, str | None, tuple[int, int] | None]:
    """(text delta, finish_reason, (prompt_tokens, completion_tokens)) of one stream chunk."""
    usage = chunk.get("usage")
    counts: tuple[int, int] | None = None
    if isinstance(usage, dict):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int) and isinstance(c, int):
            counts = (p, c)
    choices = chunk.get("choices")
    if choices is None and counts is not None:
        return "", None, counts
    if not isinstance(choices, list):
        raise BackendResponseError("backend sent a chunk without a 'choices' list", status_code=status)
    text, finish = "", None
    for choice in choices:
        if not isinstance(choice, dict):
            raise BackendResponseError("backend sent a malformed choice", status_code=status)
        if choice.get("index", 0) != 0:
            continue
        if kind == "chat":
            delta = choice.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, dict) else None
        else:
            piece = choice.get("text")
        if piece is not None and not isinstance(piece, str):
            raise BackendResponseError("backend sent non-text content", status_code=status)
        text += piece or ""
        reason = choice.get("finish_reason")
        if reason is not None:
            finish = str(reason)
    return text, finish, counts


def _prompt_tokens(kind: Kind, sent: Mapping[str, Any]) -> int:
    if kind == "completion":
        prompt = sent.get("prompt")
        return approx_tokens(prompt if isinstance(prompt, str) else json.dumps(prompt))
    total = 0
    for m in sent.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        total += approx_tokens(content if isinstance(content, str) else json.dumps(content)) + 4
    return total
