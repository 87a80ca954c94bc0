"""The node's status page: ``GET /`` and its two static files, shipped as package data.

``static/status.html`` loads ``/p2pserve/ui/status.js`` and ``status.css``; the script
fetches ``/p2pserve/status`` every few seconds (with the API key as a bearer token when one
is given, in the page's field or as ``#key=...`` in its URL) and draws the peers, credit and
stake over time (a ring of samples kept in the page, no server state), the local models,
the recent requests and the duels. No build step, no third-party code.

The page holds no secret and changes nothing, so it is served without the key; the data it
fetches still needs the key and passes the :class:`~p2pserve.api.app.RequestGuard` like any
request. Every answer carries a strict Content-Security-Policy (scripts and styles from the
node only, fetches to the node only, no framing): peer-controlled strings (model names) are
written as text, never as markup.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["PAGE_HEADERS", "page_routes"]

PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
"""Headers of the page and its files."""

_FILES = {
    "/": ("status.html", "text/html; charset=utf-8"),
    "/p2pserve/ui/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/p2pserve/ui/status.css": ("status.css", "text/css; charset=utf-8"),
}


def page_routes() -> list[Route]:
    """The page's routes (the files are read once, here)."""
    static = files("p2pserve.api") / "static"
    routes = []
    for path, (name, media_type) in _FILES.items():
        content = (static / name).read_bytes()

        async def endpoint(request: Request, content: bytes = content, media_type: str = media_type) -> Response:
            return Response(content, media_type=media_type, headers=PAGE_HEADERS)

        routes.append(Route(path, endpoint, methods=["GET"]))
    return routes
