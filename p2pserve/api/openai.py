"""OpenAI-compatible HTTP routes on every node: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

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
  ends it with one ``data: {"error": ...}`` event, then ``data: [DONE]``.

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
import uuid
from collections.abc import Callable
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
    usage,
    usage_chunk,
    validate_body,
)
from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.errors import BadRequest, RequestTooLarge, ServingError
from p2pserve.serving.service import Completed, ServeService, Started
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = ["EXECUTOR_HEADER", "error_body", "openai_routes", "validate_body"]

EXECUTOR_HEADER = "X-P2PServe-Executor"
MAX_BODY = DEFAULT_LIMITS.max_prompt
"""Largest request body accepted by default (bytes; a node's ``limits.max_prompt``); a larger
one is refused with 413 before it is buffered."""


def _error_response(exc: ServingError) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status_code)


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
                 include_usage: bool, created: int) -> None:
        super().__init__()
        self.serve = serve
        self.kind = kind
        self.model = model
        self.stream = stream
        self.req_body = body
        self.include_usage = include_usage
        self.created = created
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        self.id = prefix + uuid.uuid4().hex
        # A text chunk is ``_head + json.dumps(text) + _tail``: the same bytes as
        # ``json.dumps(self._chunk(text=text))``, without building and encoding the object.
        head = json.dumps(self._chunk(text="\x00"), separators=(",", ":"))
        self._head, _, self._tail = head.rpartition('"\\u0000"')
        self._head = "data: " + self._head
        self._tail += "\n\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The server drops writes to a client that hung up without telling us, so a watcher
        # listens for http.disconnect and stops the request: the serving path then tells a
        # remote executor to stop (Cancel) and pays only for what it produced.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
            if self.stream:
                await self._streamed(scope, receive, send)
            else:
                await self._whole(scope, receive, send)
            nursery.cancel_scope.cancel()

    async def _whole(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts: list[str] = []
        done: Completed | None = None
        try:
            async with self.serve.submit(self.kind, self.model, self.req_body) as events:
                async for ev in events:
                    if isinstance(ev, TextDelta):
                        parts.append(ev.text)
                    elif isinstance(ev, Completed):
                        done = ev
        except ServingError as exc:
            await _error_response(exc)(scope, receive, send)
            return
        assert done is not None
        payload = completion_object(self.kind, self.id, self.created, self.model, "".join(parts), done.finish_reason,
                                    _usage(done))
        payload["p2pserve"] = _p2pserve(done)
        response = JSONResponse(payload, headers={EXECUTOR_HEADER: done.executor})
        await response(scope, receive, send)

    def _chunk(self, *, text: str | None = None, role: bool = False, finish: str | None = None) -> dict[str, Any]:
        return chunk_object(self.kind, self.id, self.created, self.model, text=text, role=role, finish=finish)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Events are queued and written together at the next text delta or at the end: the
        # role chunk rides with the first text, and the last chunk, usage and [DONE] end the
        # body in one write (each ASGI body message is a socket write). Nothing waits: the
        # role chunk is only held until the event that follows Started, which is ready.
        started = False
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
                        await flush()
                    else:
                        last = self._chunk(finish=ev.finish_reason, text=None if self.kind == "chat" else "")
                        last["p2pserve"] = _p2pserve(ev)
                        event(last)
                        if self.include_usage:
                            event(usage_chunk(self.kind, self.id, self.created, self.model, _usage(ev)))
        except ServingError as exc:
            if not started:
                await _error_response(exc)(scope, receive, send)
                return
            event(error_body(exc))
        event("[DONE]")
        await flush(more=False)


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (the body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class _Endpoint:
    """``POST`` of one completion kind, as a raw ASGI app (see the module docstring)."""

    def __init__(self, serve: ServeService, kind: Kind, api_key: str | None, clock: Clock) -> None:
        self.serve, self.kind, self.api_key, self.clock = serve, kind, api_key, clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        denied = bearer_denied(scope, self.api_key)
        if denied is not None:
            await denied(scope, receive, send)
            return
        try:
            raw = await _read_body(receive, self.serve.limits.max_prompt)
            if raw is None:
                return  # the client went away before its body arrived
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
            model, stream, backend_body = validate_body(self.kind, body)
        except ServingError as exc:
            await _error_response(exc)(scope, receive, send)
            return
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if stream else False
        answer = _Answer(self.serve, self.kind, model, stream, backend_body, include_usage, int(self.clock.wall()))
        await answer(scope, receive, send)


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
) -> list[Route]:
    """The ``/v1`` routes for ``serve``. ``known_models`` lists ``/v1/models`` (default: local
    models and every model a known peer serves). ``api_key``: require ``Bearer <key>``.
    Bodies above ``serve.limits.max_prompt`` bytes are refused (413) before being buffered."""
    models = known_models or serve.known_models

    async def list_models(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        if denied is not None:
            return denied
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "p2pserve"} for m in sorted(models())]
        return JSONResponse({"object": "list", "data": data})

    return [
        Route("/v1/chat/completions", _Endpoint(serve, "chat", api_key, clock), methods=["POST"]),
        Route("/v1/completions", _Endpoint(serve, "completion", api_key, clock), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
    ]
