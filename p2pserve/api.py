"""The node's HTTP API: OpenAI-compatible ``/v1`` routes, ``/p2pserve/status`` and ``/metrics``.

A Starlette app served by Hypercorn's trio worker inside the node's own trio process, so it
shares the node's nursery, clock and state. The ``/v1`` routes come from
:mod:`p2pserve.openai_api`; this module only assembles the app and runs the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

__all__ = ["bearer_denied", "build_app", "check_bearer", "serve_app"]

log = logging.getLogger(__name__)


def _unauthorized() -> Response:
    return JSONResponse(
        {"error": {"message": "missing or invalid API key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
        status_code=401,
    )


def check_bearer(request: Request, api_key: str | None) -> Response | None:
    """None if the request may proceed, else a 401 in OpenAI's error shape."""
    if not api_key:
        return None
    if request.headers.get("authorization", "") == f"Bearer {api_key}":
        return None
    return _unauthorized()


def bearer_denied(scope: Scope, api_key: str | None) -> Response | None:
    """:func:`check_bearer` for a raw ASGI ``scope`` (the first ``authorization`` header counts)."""
    if not api_key:
        return None
    for name, value in scope["headers"]:
        if name == b"authorization":
            return None if value.decode("latin-1") == f"Bearer {api_key}" else _unauthorized()
    return _unauthorized()


def build_app(
    *,
    status: Callable[[], dict[str, Any]],
    metrics: Callable[[], str],
    api_key: str | None = None,
    extra_routes: list[BaseRoute] | None = None,
) -> Starlette:
    """The node's ASGI app. ``status``/``metrics`` are called per request (cheap, no I/O)."""

    async def status_endpoint(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        return denied or JSONResponse(status())

    async def metrics_endpoint(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        return denied or PlainTextResponse(metrics(), media_type="text/plain; version=0.0.4")

    routes: list[BaseRoute] = [
        Route("/p2pserve/status", status_endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *(extra_routes or []),
    ]
    return Starlette(routes=routes)


async def serve_app(
    app: Starlette,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``started`` with the base URL."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2pserve.http")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0

    async def _serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await hypercorn_serve(app, config, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(_serve)
        url = binds[0] if binds else f"http://{host}:{port}"
        task_status.started(url)
