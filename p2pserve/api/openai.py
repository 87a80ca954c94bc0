"""OpenAI-compatible HTTP routes on every node: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models`` and ``/v1/models/{id}``.

Shapes follow OpenAI's API so the official ``openai`` package works unchanged:

* non-streamed answers are ``chat.completion`` / ``text_completion`` objects with
  ``choices`` and ``usage``, plus a top-level ``"p2pserve": {"executor", "receipt",
  "local"}`` (``receipt`` is the hex of the executor's signed receipt, null when it ran
  locally);
* streamed answers are server-sent events ``data: {chunk}`` ending with ``data: [DONE]``;
  the first chat chunk carries ``delta.role``; the last carries ``finish_reason`` (and the
  ``p2pserve`` object); ``stream_options.include_usage`` adds a usage chunk;
* every answer carries the header ``X-P2PServe-Executor`` (the peer that answered first);
* errors are ``{"error": {"message", "type", "param", "code"}}`` with the status of the
  :class:`~p2pserve.errors.ServingError` (unknown model 404, bad body 400, no capacity
  503, failed 502; a missing or wrong bearer key 401). A failure after a stream started
  ends it with one ``data: {"error": ...}`` event, then ``data: [DONE]``. Unknown ``/v1``
  paths and wrong methods get the same shape from the app (:func:`p2pserve.api.app.build_app`);
* features a node does not serve are refused, not dropped: ``tools``, ``tool_choice``,
  ``functions`` and ``function_call`` give 400 ``unsupported_parameter`` naming the field
  (null, an empty list and ``"none"`` read as absent); a body nested deeper than
  :data:`MAX_JSON_DEPTH` gives 400 (never a RecursionError).

Every user request that gets past the bearer check is reported once, when it ends, to the
optional ``observer`` as a :class:`RequestRecord` (outcome, where it ran, duration, time to
first token, tokens): the node's metrics and its status page's recent requests come from it.

Nothing is answered until the first token (or the error) is known, so a request that fails
before any token gets a real HTTP status, not a 200 with an error inside. A client that
hangs up stops its request (an executor elsewhere is told to stop and paid for what it
produced until then).

The two completion routes are raw ASGI apps (no Starlette Request, no per-request wrapper
apps): they are the hot path of every user request. Streamed chunks are rendered from
per-request byte templates, byte for byte what ``json.dumps`` of the chunk object gives.
Request rules and answer shapes come from :mod:`p2pserve.backends.openai_format`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from p2pserve.api.app import bearer_denied, check_bearer
from p2pserve.backends.base import Kind, TextDelta
from p2pserve.backends.openai_format import (
    chunk_object,
    completion_object,
    error_body,
    error_object,
    usage,
    usage_chunk,
    validate_body,
)
from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.errors import RequestTooLarge, ServingError, UnknownModel
from p2pserve.jsonbody import MAX_JSON_DEPTH, json_too_deep, parse_json_body
from p2pserve.serving.service import Completed, ServeService, Started
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = [
    "EXECUTOR_HEADER",
    "MAX_JSON_DEPTH",
    "UNSUPPORTED_FIELDS",
    "RequestObserver",
    "RequestRecord",
    "error_body",
    "json_too_deep",
    "model_object",
    "openai_routes",
    "unsupported_field",
    "validate_body",
]

log = logging.getLogger(__name__)

EXECUTOR_HEADER = "X-P2PServe-Executor"
MAX_BODY = DEFAULT_LIMITS.max_prompt
"""Largest request body accepted by default (bytes; a node's ``limits.max_prompt``); a larger
one is refused with 413 before it is buffered."""
UNSUPPORTED_FIELDS = ("tools", "tool_choice", "functions", "function_call")
"""Request fields naming features no node serves (tool and function calling): refused with
400 rather than dropped, so a client never mistakes a plain answer for a tool-less one."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One user request as the API saw it end (for metrics and the status page)."""

    kind: Kind
    model: str
    """The model asked for (as sent: may name no model at all when ``outcome`` is an error)."""
    stream: bool
    outcome: str
    """``"completed"``, ``"cancelled"`` (the client left) or the error's ``type``
    (``invalid_request_error``, ``model_not_found``, ``no_capacity``, ``request_failed``, ...)."""
    where: str
    """``"local"``, ``"offloaded"`` (the last executor was a peer) or ``"none"`` (no executor started)."""
    executor: str | None
    """The peer that answered last (None when none did)."""
    created: int
    """Wall-clock second the request arrived (the answer's ``created``)."""
    duration_s: float
    """From the parsed request to its end (trio's clock)."""
    ttft_s: float | None
    """From the parsed request to its first text (None when no text came)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


RequestObserver = Callable[[RequestRecord], None]
"""Hears of every user request once it ended; synchronous, must not block (errors it raises
are logged and dropped)."""


def _error_response(exc: ServingError) -> JSONResponse:
    retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=retry)


def unsupported_field(body: Any) -> str | None:
    """The first of :data:`UNSUPPORTED_FIELDS` that ``body`` asks for (null, ``[]`` and
    ``"none"`` ask for nothing), else None."""
    if not isinstance(body, dict):
        return None
    for name in UNSUPPORTED_FIELDS:
        value = body.get(name)
        if value is not None and value != [] and value != "none":
            return name
    return None


def _unsupported_response(name: str) -> JSONResponse:
    message = (f"'{name}' is not supported: p2pserve nodes do not serve tool or function calling; "
               f"send the request without '{name}'")
    return JSONResponse(error_object(message, "invalid_request_error", "unsupported_parameter", name), status_code=400)


def model_object(model: str) -> dict[str, Any]:
    """OpenAI's model object for ``model``."""
    return {"id": model, "object": "model", "created": 0, "owned_by": "p2pserve"}


def _usage(done: Completed) -> dict[str, int]:
    return usage(done.prompt_tokens, done.completion_tokens)


def _p2pserve(done: Completed) -> dict[str, Any]:
    return {
        "executor": done.executor,
        "receipt": done.receipt.encode().hex() if done.receipt is not None else None,
        "local": done.local,
    }


class _Answer(Response):
    """Runs one request through the serving service and writes the OpenAI answer."""

    def __init__(self, serve: ServeService, kind: Kind, model: str, stream: bool, body: dict[str, Any],
                 include_usage: bool, created: int, observer: RequestObserver | None = None) -> None:
        super().__init__()
        self.serve = serve
        self.kind = kind
        self.model = model
        self.stream = stream
        self.req_body = body
        self.include_usage = include_usage
        self.created = created
        self.observer = observer
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        self.id = prefix + uuid.uuid4().hex
        # A text chunk is ``_head + json.dumps(text) + _tail``: the same bytes as
        # ``json.dumps(self._chunk(text=text))``, without building and encoding the object.
        head = json.dumps(self._chunk(text="\x00"), separators=(",", ":"))
        self._head, _, self._tail = head.rpartition('"\\u0000"')
        self._head = "data: " + self._head
        self._tail += "\n\n"
        # what the observer is told when the request ends
        self._t0 = trio.current_time()
        self._first: float | None = None
        self._outcome = "cancelled"  # unless it completes or fails
        self._last: Started | None = None
        self._done: Completed | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The server drops writes to a client that hung up without telling us, so a watcher
        # listens for http.disconnect and stops the request: the serving path then tells a
        # remote executor to stop (Cancel) and pays only for what it produced.
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
                if self.stream:
                    await self._streamed(scope, receive, send)
                else:
                    await self._whole(scope, receive, send)
                nursery.cancel_scope.cancel()
        except Exception:  # a bug (cancellation is a BaseException and stays "cancelled")
            self._outcome = "server_error"
            raise
        finally:
            if self.observer is not None:
                _report(self.observer, self._record())

    def _record(self) -> RequestRecord:
        done, last = self._done, self._last
        local = done.local if done is not None else last.local if last is not None else None
        executor = done.executor if done is not None else last.executor if last is not None else None
        return RequestRecord(
            self.kind, self.model, self.stream, self._outcome, "none" if local is None else "local" if local else "offloaded",
            executor, self.created, trio.current_time() - self._t0,
            None if self._first is None else self._first - self._t0,
            done.prompt_tokens if done is not None else 0, done.completion_tokens if done is not None else 0,
        )

    def _note(self, ev: Started | TextDelta | Completed) -> None:
        """Remember what the observer will be told (cheap: the hot path)."""
        if isinstance(ev, TextDelta):
            if self._first is None and ev.text:
                self._first = trio.current_time()
        elif isinstance(ev, Started):
            self._last = ev
        else:
            self._done = ev
            self._outcome = "completed"

    async def _whole(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The answer goes out as soon as Completed arrives: what the serving path still does
        # after it (the request's log line, its trace) is not the user's wait.
        parts: list[str] = []
        sent = False
        try:
            async with self.serve.submit(self.kind, self.model, self.req_body) as events:
                async for ev in events:
                    self._note(ev)
                    if isinstance(ev, TextDelta):
                        parts.append(ev.text)
                    elif isinstance(ev, Completed) and not sent:
                        sent = True
                        payload = completion_object(self.kind, self.id, self.created, self.model, "".join(parts),
                                                    ev.finish_reason, _usage(ev))
                        payload["p2pserve"] = _p2pserve(ev)
                        await JSONResponse(payload, headers={EXECUTOR_HEADER: ev.executor})(scope, receive, send)
        except ServingError as exc:
            if sent:  # the answer is out; nothing to add to it
                log.warning("request failed after its answer was sent: %s", exc)
                return
            self._outcome = exc.error_type
            await _error_response(exc)(scope, receive, send)
            return
        assert sent

    def _chunk(self, *, text: str | None = None, role: bool = False, finish: str | None = None) -> dict[str, Any]:
        return chunk_object(self.kind, self.id, self.created, self.model, text=text, role=role, finish=finish)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Events are queued and written together at the next text delta or at the end: the
        # role chunk rides with the first text, and the last chunk, usage and [DONE] end the
        # body in one write (each ASGI body message is a socket write). Nothing waits: the
        # role chunk is only held until the event that follows Started, which is ready.
        started = ended = False
        pending: list[bytes] = []

        def event(data: dict[str, Any] | str) -> None:
            raw = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
            pending.append(f"data: {raw}\n\n".encode())

        async def flush(*, more: bool = True) -> None:
            body = b"".join(pending)
            pending.clear()
            await send({"type": "http.response.body", "body": body, "more_body": more})

        try:
            async with self.serve.submit(self.kind, self.model, self.req_body) as events:
                async for ev in events:
                    self._note(ev)
                    if isinstance(ev, Started):
                        if not started:
                            started = True
                            await send({
                                "type": "http.response.start",
                                "status": 200,
                                "headers": [
                                    (b"content-type", b"text/event-stream; charset=utf-8"),
                                    (b"cache-control", b"no-cache"),
                                    (EXECUTOR_HEADER.lower().encode(), ev.executor.encode()),
                                ],
                            })
                            if self.kind == "chat":
                                event(self._chunk(text="", role=True))
                    elif isinstance(ev, TextDelta):
                        pending.append(f"{self._head}{json.dumps(ev.text)}{self._tail}".encode())
                        if not ev.more:  # the tokens of one backend read leave in one write
                            await flush()
                    elif not ended:  # Completed: the body ends now, before the serving path's own wrap-up
                        last = self._chunk(finish=ev.finish_reason, text=None if self.kind == "chat" else "")
                        last["p2pserve"] = _p2pserve(ev)
                        event(last)
                        if self.include_usage:
                            event(usage_chunk(self.kind, self.id, self.created, self.model, _usage(ev)))
                        event("[DONE]")
                        ended = True
                        await flush(more=False)
        except ServingError as exc:
            if ended:  # the answer is out; nothing to add to it
                log.warning("request failed after its answer was sent: %s", exc)
                return
            self._outcome = exc.error_type
            if not started:
                await _error_response(exc)(scope, receive, send)
                return
            event(error_body(exc))
        if not ended:
            event("[DONE]")
            await flush(more=False)


def _report(observer: RequestObserver, record: RequestRecord) -> None:
    try:
        observer(record)
    except Exception:  # an observer must not break the answer: logged, never raised
        log.exception("request observer failed")


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (the body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


_MAX_RECORDED_MODEL = 200
"""A refused request's model name is kept (for the observer) up to this many characters."""


class _Endpoint:
    """``POST`` of one completion kind, as a raw ASGI app (see the module docstring)."""

    def __init__(self, serve: ServeService, kind: Kind, api_key: str | None, clock: Clock,
                 observer: RequestObserver | None = None) -> None:
        self.serve, self.kind, self.api_key, self.clock, self.observer = serve, kind, api_key, clock, observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        denied = bearer_denied(scope, self.api_key)
        if denied is not None:
            await denied(scope, receive, send)
            return
        t0 = trio.current_time()
        body: Any = None
        refusal: tuple[str, Response] | None = None  # (the error type, the answer)
        try:
            raw = await _read_body(receive, self.serve.limits.max_prompt)
            if raw is None:
                return  # the client went away before its body arrived
            body = _parse_json(raw)
            field = unsupported_field(body)
            if field is not None:
                refusal = "invalid_request_error", _unsupported_response(field)
            else:
                model, stream, backend_body = validate_body(self.kind, body)
        except ServingError as exc:
            refusal = exc.error_type, _error_response(exc)
        if refusal is not None:
            if self.observer is not None:
                _report(self.observer, self._refused(body, refusal[0], t0))
            await refusal[1](scope, receive, send)
            return
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if stream else False
        answer = _Answer(self.serve, self.kind, model, stream, backend_body, include_usage, int(self.clock.wall()),
                         self.observer)
        await answer(scope, receive, send)

    def _refused(self, body: Any, outcome: str, t0: float) -> RequestRecord:
        fields = body if isinstance(body, dict) else {}
        model = fields.get("model")
        return RequestRecord(
            self.kind, model[:_MAX_RECORDED_MODEL] if isinstance(model, str) else "", fields.get("stream") is True,
            outcome, "none", None, int(self.clock.wall()), trio.current_time() - t0, None,
        )


_parse_json = parse_json_body


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body (None if the client left first); RequestTooLarge as soon as
    it passes ``limit`` bytes, before more is buffered."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def openai_routes(
    serve: ServeService,
    *,
    api_key: str | None = None,
    known_models: Callable[[], set[str]] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    observer: RequestObserver | None = None,
) -> list[Route]:
    """The ``/v1`` routes for ``serve``. ``known_models`` lists ``/v1/models`` (default: local
    models and every model a known peer serves). ``api_key``: require ``Bearer <key>``.
    Bodies above ``serve.limits.max_prompt`` bytes are refused (413) before being buffered.
    ``observer`` hears of every completion request that passed the key check, once it ended."""
    models = known_models or serve.known_models

    async def list_models(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [model_object(m) for m in sorted(models())]})

    async def get_model(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        if denied is not None:
            return denied
        model = request.path_params["model"]
        if model not in models():
            return _error_response(UnknownModel(f"The model '{model}' does not exist: no node in reach serves it"))
        return JSONResponse(model_object(model))

    return [
        Route("/v1/chat/completions", _Endpoint(serve, "chat", api_key, clock, observer), methods=["POST"]),
        Route("/v1/completions", _Endpoint(serve, "completion", api_key, clock, observer), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    ]
