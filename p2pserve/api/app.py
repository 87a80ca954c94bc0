"""The node's HTTP API: OpenAI-compatible ``/v1`` routes, ``/p2pserve/status``, ``/metrics``,
the status page at ``/``.

A Starlette app served by :mod:`p2pserve.api.server` (h11 over trio) inside the node's own
trio process, so it shares the node's nursery, clock and state. The ``/v1`` routes come from
:mod:`p2pserve.api.openai`, the page from :mod:`p2pserve.api.page`; this module assembles the
app, guards it and runs the server. Every error the app itself answers (an unknown path, a
wrong method, an unexpected failure) has OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, so a client of ``/v1`` never has to parse plain text.

Browsers are kept from using the API against its owner. The API spends credit and moves
stake, and by default has no key, so a web page must not be able to call it:

* DNS rebinding: a page on ``evil.example`` that re-resolves its name to 127.0.0.1 talks to
  the node as same-origin; it cannot change the ``Host`` header, which still says
  ``evil.example``. So every request whose Host is not one of the node's names (the bound
  address, localhost, 127.0.0.1, [::1] at the API port, plus ``allowed_hosts``) gets 403.
* Cross-site requests: a page may send a "simple" POST (``text/plain``) anywhere without
  asking. So every request that is not GET/HEAD/OPTIONS must be ``application/json`` (which
  a browser sends cross-site only after a CORS preflight, granted to listed origins only),
  else 415; and every request with an ``Origin`` that is not the node's own nor in
  ``allowed_origins`` gets 403. Listed origins get CORS answers, so their pages can work.

Clients that send no ``Origin`` (curl, SDKs, the CLI) are unaffected. :class:`RequestGuard`
is one raw ASGI middleware in front of every route: a few header comparisons per request.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from p2pserve.api.page import page_routes
from p2pserve.api.server import serve_asgi
from p2pserve.backends.openai_format import error_object
from p2pserve.hostnames import DEFAULT_PORTS, normalize_origin, split_host

__all__ = [
    "METRICS_CONTENT_TYPE",
    "HostPolicy",
    "RequestGuard",
    "bearer_denied",
    "build_app",
    "check_bearer",
    "error_handlers",
    "serve_app",
]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``/metrics`` answers with: Prometheus text format 0.0.4."""

log = logging.getLogger(__name__)


def _unauthorized() -> Response:
    return JSONResponse(
        error_object("missing or invalid API key", "invalid_request_error", "invalid_api_key"),
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


_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
_WILDCARDS = ("", "*", "0.0.0.0", "::", "[::]")


def _bound_name(host: str) -> str:
    """The configured bind host as a Host header would name it (IPv6 in brackets)."""
    h = host.strip().lower()
    if ":" in h and not h.startswith("["):
        h = f"[{h}]"
    return h


@dataclass(frozen=True, slots=True)
class _Names:
    """The Host values one API port answers to."""

    exact: frozenset[bytes]
    """``name:port`` as a client writes it in Host (and plain ``name`` on the scheme's default port)."""
    named: frozenset[tuple[str, int]]
    """The same, parsed, for Host values spelt differently (upper case, default port written)."""
    any_port: frozenset[str]
    """Names allowed on every port (``allowed_hosts`` entries without a port)."""


class HostPolicy:
    """Which ``Host`` and ``Origin`` headers the API answers (pure: no I/O; see the module doc).

    ``host``/``port``: where the API is bound (port 0: the port each connection arrived on,
    from the ASGI ``server`` entry). ``allowed_hosts``/``allowed_origins``: the config lists
    (see :class:`p2pserve.config.ServerParams`); raises ValueError for an entry that is not
    a host or an origin.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, allowed_hosts: Sequence[str] = (),
                 allowed_origins: Sequence[str] = ()) -> None:
        self.port = port
        self.bound = _bound_name(host)
        wildcard = self.bound in _WILDCARDS
        self.any_host = "*" in allowed_hosts or (wildcard and not allowed_hosts)
        """Any Host is accepted (DNS-rebinding protection off: ``"*"``, or a wildcard bind with no list)."""
        self.local = _LOOPBACK if wildcard or self.bound in _LOOPBACK else (*_LOOPBACK, self.bound)
        listed = [split_host(h) for h in allowed_hosts if h != "*"]
        self.listed_exact = frozenset((n, p) for n, p in listed if p is not None)
        self.listed_any_port = frozenset(n for n, p in listed if p is None)
        self.any_origin = "*" in allowed_origins
        self.origins = frozenset(normalize_origin(o) for o in allowed_origins if o != "*")
        self._names: dict[tuple[int | None, str], _Names] = {}

    def names(self, server_port: int | None, scheme: str = "http") -> _Names:
        """The Host values allowed on ``server_port`` (the configured port wins when not 0)."""
        port = self.port or server_port
        cached = self._names.get((port, scheme))
        if cached is not None:
            return cached
        named = set(self.listed_exact)
        if port is not None:
            named.update((n, port) for n in self.local)
        exact = {f"{n}:{p}".encode() for n, p in named}
        exact.update(n.encode() for n, p in named if p == DEFAULT_PORTS.get(scheme))
        names = _Names(frozenset(exact), frozenset(named), self.listed_any_port)
        if len(self._names) < 64:  # a port-0 API sees one port; keep the cache bounded anyway
            self._names[(port, scheme)] = names
        return names

    def host_allowed(self, host: bytes | None, server_port: int | None, scheme: str = "http") -> bool:
        """Whether a request with this ``Host`` header may be answered."""
        if self.any_host:
            return True
        if host is None:
            return False
        names = self.names(server_port, scheme)
        return host in names.exact or self._listed(host.decode("latin-1"), names, scheme)

    def _listed(self, authority: str, names: _Names, scheme: str) -> bool:
        try:
            name, port = split_host(authority)
        except ValueError:
            return False
        return name in names.any_port or (name, port or DEFAULT_PORTS.get(scheme, 80)) in names.named

    def own_origin(self, origin: str, host: bytes | None, server_port: int | None, scheme: str = "http") -> bool:
        """Whether ``origin`` is the node's own: an http(s) origin on one of its names (not
        ``"*"``), or the very Host the request was sent to (same-origin). Such requests are
        answered; so are those from :meth:`listed_origin` origins."""
        o_scheme, _, authority = origin.strip().lower().partition("://")
        if o_scheme not in DEFAULT_PORTS or not authority:
            return False  # "null", extensions, ...: only by allowed_origins
        names = self.names(server_port, scheme)
        if self._listed(authority, names, o_scheme):
            return True
        if host is None:
            return False
        try:
            return _with_port(authority, o_scheme) == _with_port(host.decode("latin-1"), scheme)
        except ValueError:
            return False

    def names_text(self, server_port: int | None, scheme: str = "http") -> str:
        """The allowed Host names on ``server_port``, for an error message."""
        names = self.names(server_port, scheme)
        shown = sorted(f"{n}:{p}" for n, p in names.named) + sorted(f"{n} (any port)" for n in names.any_port)
        return ", ".join(shown) or "no name"

    def listed_origin(self, origin: str) -> bool:
        """Whether ``origin`` is listed in ``allowed_origins`` (such pages get CORS answers)."""
        if self.any_origin:
            return True
        try:
            return normalize_origin(origin) in self.origins
        except ValueError:
            return False


def _with_port(authority: str, scheme: str) -> tuple[str, int | None]:
    name, port = split_host(authority)
    return name, port if port is not None else DEFAULT_PORTS.get(scheme)


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_JSON = b"application/json"
_CORS_METHODS = b"GET, POST"
_CORS_HEADERS = b"authorization, content-type"


class RequestGuard:
    """Raw ASGI middleware that applies a :class:`HostPolicy`, and the JSON-only rule to
    state-changing methods, before any route runs (see the module doc). Refusals are
    OpenAI-shaped errors: 403 ``host_not_allowed`` / ``origin_not_allowed``, 415
    ``unsupported_media_type`` (a refused websocket is closed before it is accepted: 403)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host: bytes | None = None
        origin: str | None = None
        content_type: bytes | None = None
        preflight: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value if host is None else host
            elif name == b"origin":
                origin = value.decode("latin-1") if origin is None else origin
            elif name == b"content-type":
                content_type = value if content_type is None else content_type
            elif name == b"access-control-request-method":
                preflight = value
        policy = self.policy
        server = scope.get("server")
        port = server[1] if server else None
        scheme = scope.get("scheme", "http")
        if not policy.host_allowed(host, port, scheme):
            shown = "(none)" if host is None else repr(host.decode("latin-1"))
            names = policy.names_text(port, scheme)
            await _refuse(scope, send, 403, "host_not_allowed",
                          f"Host {shown} is not allowed (DNS-rebinding protection): this API answers to {names}; "
                          "to serve it under another name, add that name to server_params.allowed_hosts "
                          "('*' allows any)")
            return
        listed = False
        if origin is not None:
            listed = policy.listed_origin(origin)
            if not listed and not policy.own_origin(origin, host, port, scheme):
                await _refuse(scope, send, 403, "origin_not_allowed",
                              f"Origin {origin!r} may not call this API (cross-site request protection); to let "
                              "web pages from that origin call it, add it to server_params.allowed_origins")
                return
        method = scope.get("method", "GET")
        if listed and method == "OPTIONS" and preflight is not None:
            await _preflight(send, _cors_headers(origin))
            return
        if method not in _SAFE_METHODS and (
            content_type is None or content_type.partition(b";")[0].strip().lower() != _JSON
        ):
            got = "none" if content_type is None else repr(content_type.decode("latin-1"))
            await _refuse(scope, send, 415, "unsupported_media_type",
                          f"the request body must be JSON, sent with Content-Type: application/json (got {got})")
            return
        if listed:
            send = _with_headers(send, _cors_headers(origin))
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(error_object(message, "invalid_request_error", code)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _cors_headers(origin: str | None) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", (origin or "").encode("latin-1")), (b"vary", b"origin")]


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": [
        *cors,
        (b"access-control-allow-methods", _CORS_METHODS),
        (b"access-control-allow-headers", _CORS_HEADERS),
        (b"access-control-max-age", b"600"),
    ]})
    await send({"type": "http.response.body", "body": b""})


def _with_headers(send: Send, cors: list[tuple[bytes, bytes]]) -> Send:
    extra = [*cors, (b"access-control-expose-headers", b"x-p2pserve-executor")]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped


_V1_PATHS = "/v1/chat/completions (POST), /v1/completions (POST), /v1/models (GET), /v1/models/{id} (GET)"


def _error_json(status: int, message: str, type_: str, code: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_object(message, type_, code),
                        status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 (and any other HTTPException) in OpenAI's error shape."""
    assert isinstance(exc, HTTPException)
    what = f"{request.method} {request.url.path[:200]}"
    if exc.status_code == 404:
        served = f": this node serves {_V1_PATHS}" if request.url.path.startswith("/v1") else ""
        return _error_json(404, f"Invalid URL ({what}){served}", "invalid_request_error", "unknown_url", exc.headers)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return _error_json(405, f"Method not allowed ({what}); allowed: {allowed}", "invalid_request_error",
                           "method_not_allowed", exc.headers)
    return _error_json(exc.status_code, f"{exc.detail} ({what})", "invalid_request_error", f"http_{exc.status_code}",
                       exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: a JSON 500 (the traceback goes to the server's log)."""
    return _error_json(500, "internal error: the node failed to answer this request (its log has the details)",
                       "server_error", "internal_error")


def error_handlers() -> dict[Any, Callable[[Request, Exception], Any]]:
    """Starlette ``exception_handlers`` that answer the app's own errors in OpenAI's shape."""
    return {HTTPException: _http_error, Exception: _server_error}


def build_app(
    *,
    status: Callable[[], dict[str, Any]],
    metrics: Callable[[], str],
    api_key: str | None = None,
    extra_routes: list[BaseRoute] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    status_page: bool = True,
) -> ASGIApp:
    """The node's ASGI app. ``status``/``metrics`` are called per request (cheap, no I/O).

    ``host``/``port``: the address the API is bound to (``server_params.api``; port 0 means
    the port each connection arrived on); with ``allowed_hosts`` and ``allowed_origins``
    (``server_params``) they make the :class:`HostPolicy` every request passes first.
    ``status_page``: serve the page of :mod:`p2pserve.api.page` at ``/``.
    Raises ValueError for a malformed allow-list entry."""
    policy = HostPolicy(host, port, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)

    async def status_endpoint(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        return denied or JSONResponse(status())

    async def metrics_endpoint(request: Request) -> Response:
        denied = check_bearer(request, api_key)
        return denied or PlainTextResponse(metrics(), media_type=METRICS_CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/p2pserve/status", status_endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *(extra_routes or []),
        *(page_routes() if status_page else []),
    ]
    app = Starlette(routes=routes, exception_handlers=error_handlers())
    return RequestGuard(_FastPaths(_raw_posts(routes), app), policy)


class _FastPaths:
    """Hands a ``POST`` to a fixed path straight to its raw ASGI app (the ``/v1`` completion
    routes: every user request), past Starlette's router and its two exception layers; every
    other request goes to ``app``. A failure of a fast route is the HTTP server's 500."""

    def __init__(self, fast: dict[str, ASGIApp], app: ASGIApp) -> None:
        self.fast = fast
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            fast = self.fast.get(scope["path"])
            if fast is not None:
                await fast(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _raw_posts(routes: list[BaseRoute]) -> dict[str, ASGIApp]:
    """Path -> app of the routes that are raw ASGI apps taking only ``POST`` at a fixed path."""
    out: dict[str, ASGIApp] = {}
    for route in routes:
        if (isinstance(route, Route) and route.methods == {"POST"} and "{" not in route.path
                and not inspect.isfunction(route.endpoint) and not inspect.ismethod(route.endpoint)):
            out[route.path] = route.app
    return out


async def serve_app(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled (:mod:`p2pserve.api.server`);
    ``started`` with the base URL."""
    await serve_asgi(app, host, port, task_status=task_status)  # type: ignore[arg-type]
