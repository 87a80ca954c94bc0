"""The fake backend's I/O adapters: an httpx ``MockTransport``, an ASGI app, a real server, a CLI.

* :func:`mock_transport` (also :meth:`FakeBackend.mock_transport`): in-process, no socket,
  for unit tests and the ``fake`` backend kind;
* :func:`create_app`: a Starlette ASGI app;
* :func:`serve_fake_backend`: hypercorn's trio worker on a real socket;
* :func:`main`: ``python -m p2pserve.backends.fake`` (a child process for benchmarks and
  process tests).

A cut (:class:`~p2pserve.backends.fake.server.StreamReply` chunks raising ``_Cut``) becomes
what a client sees when a backend dies mid-answer: ``httpx.RemoteProtocolError`` in
process, a dropped connection on a socket.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from p2pserve.backends.fake.plan import ANSWERS, DIALECTS
from p2pserve.backends.fake.server import FAULTS, FakeBackend, FakeConfig, Fault, FullReply, _Cut

__all__ = ["FakeServer", "create_app", "handle_httpx", "main", "mock_transport", "serve_fake_backend"]


async def handle_httpx(fake: FakeBackend, request: httpx.Request) -> httpx.Response:
    """``fake``'s answer to an httpx request (a ``MockTransport`` handler)."""
    reply = await fake.handle(request.method, request.url.path, await request.aread())
    if isinstance(reply, FullReply):
        return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body)
    return httpx.Response(reply.status, headers=list(reply.headers), stream=_CutAsHttpx(reply.chunks))


def mock_transport(fake: FakeBackend) -> httpx.MockTransport:
    """An ``httpx.MockTransport`` that answers with ``fake``."""

    async def handler(request: httpx.Request) -> httpx.Response:
        return await handle_httpx(fake, request)

    return httpx.MockTransport(handler)


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
    p = argparse.ArgumentParser(prog="python -m p2pserve.backends.fake", description="A deterministic fake OpenAI-compatible LLM backend.")
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
    p.add_argument("--answers", choices=ANSWERS, default="words", help="noise: answers unrelated to the prompt")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument("--schedule", type=_parse_schedule, default={}, help="e.g. 0=http500,3=cut")
    p.add_argument("--stall", type=float, default=3600.0)
    args = p.parse_args(argv)
    config = FakeConfig(
        model=args.model, dialect=args.dialect, ttft_s=args.ttft, tpot_s=args.tpot,
        time_scale=args.time_scale, max_running=args.max_running, kv_tokens_total=args.kv_tokens,
        seed=args.seed, answers=args.answers, fault_rate=args.fault_rate, fault_seed=args.fault_seed,
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
