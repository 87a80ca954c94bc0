"""Liveness and readiness: ``GET /health`` and ``GET /ready``, for load balancers and orchestrators.

* ``/health``: 200 ``{"status": "ok"}`` while the process answers HTTP at all.
* ``/ready``: 200 ``{"status": "ready", "reasons": []}`` when ``ready()`` names no reason,
  else 503 ``{"status": "not_ready", "reasons": [...]}``. The node's ``ready`` is
  :func:`p2pserve.api.status.ready_reasons` (joined a network, no local backend marked down);
  any ``Callable[[], list[str]]`` will do, so what counts as ready can grow without touching
  the routes.

Neither needs the API key (probes rarely carry one, and the status code says everything a
probe needs); the reasons, which may name backend addresses, are shown only to callers
with the key (or when the node has none).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from p2pserve.api.app import check_bearer

__all__ = ["ReadyCheck", "health_routes"]

ReadyCheck = Callable[[], list[str]]
"""Why the node is not ready (empty: ready). Synchronous and cheap: called per request."""


def health_routes(ready: ReadyCheck, *, api_key: str | None = None) -> list[Route]:
    """``/health`` and ``/ready`` (see the module doc)."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readiness(request: Request) -> Response:
        reasons = ready()
        body: dict[str, object] = {"status": "not_ready" if reasons else "ready"}
        if not reasons or check_bearer(request, api_key) is None:
            body["reasons"] = reasons
        else:
            body["reasons"] = [f"{len(reasons)} reason(s) not shown: send the API key as a bearer token to see them"]
        return JSONResponse(body, status_code=503 if reasons else 200)

    return [Route("/health", health, methods=["GET"]), Route("/ready", readiness, methods=["GET"])]
