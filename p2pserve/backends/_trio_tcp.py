"""An httpcore network backend over trio TCP streams, for the OpenAI client's ``http://`` servers.

Why not httpcore's own: a request's head and body leave in one ``send`` here (httpcore
writes them separately: two syscalls, two wake-ups of the server), and reads and writes
skip httpcore's per-call deadline and exception-mapping context managers when no timeout
is set (every wait in :mod:`.openai` runs under a trio deadline of its own).

httpx has no public knob for httpcore's network backend: :func:`http_transport` replaces
the private ``httpx.AsyncHTTPTransport._pool`` with a pool built on :class:`TCPBackend`.
``tests/test_backends_openai.py::test_http_transport_replaces_httpx_private_pool`` fails
loudly if an httpx release renames that attribute or stops sending requests through it.
"""

from __future__ import annotations

import math
from typing import Any

import httpcore
import httpx
import trio

__all__ = ["TCPBackend", "TCPStream", "http_transport"]


class TCPStream(httpcore.AsyncNetworkStream):
    """A TCP connection for httpcore that sends what was written at the next read.

    HTTP/1.1 (the only version this client speaks) always reads after writing a whole
    request, so holding writes until then is invisible but for the syscalls saved. A failed
    send shows up as httpcore's ``WriteError`` at that read; buffered bytes over
    ``_FLUSH_BYTES`` go out at once."""

    _FLUSH_BYTES = 256 * 1024

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._out: list[bytes] = []
        self._size = 0

    async def _flush(self, timeout: float | None) -> None:
        data = b"".join(self._out)
        self._out.clear()
        self._size = 0
        try:
            if timeout is None:
                await self._stream.send_all(data)
            else:
                with trio.fail_after(timeout):
                    await self._stream.send_all(data)
        except trio.TooSlowError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._out.append(buffer)
            self._size += len(buffer)
            if self._size > self._FLUSH_BYTES:
                await self._flush(timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._out:
            await self._flush(timeout)
        try:
            if timeout is None:
                return await self._stream.receive_some(max_bytes)
            with trio.fail_after(timeout):
                return await self._stream.receive_some(max_bytes)
        except trio.TooSlowError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        self._out.clear()
        await self._stream.aclose()

    def get_extra_info(self, info: str) -> Any:
        sock = self._stream.socket
        if info == "socket":
            return sock
        if info == "is_readable":
            return sock.is_readable()
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        return None


class TCPBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend over trio TCP streams (:class:`TCPStream`); plain TCP only."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with trio.fail_after(math.inf if timeout is None else timeout):
                stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        except trio.TooSlowError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        for option in socket_options or ():
            stream.setsockopt(*option)
        return TCPStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - the client never asks for one
        raise httpcore.ConnectError("unix sockets are not supported")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


def http_transport(base_url: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    """httpx's transport with :class:`TCPBackend` under its pool, for ``http://`` servers
    (``https://`` keeps httpx's default transport: None)."""
    if not base_url.startswith("http://"):
        return None
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx has no public knob for httpcore's network backend; its pool is rebuilt with ours
    # from the same limits (httpx.AsyncHTTPTransport's defaults otherwise).
    transport._pool = httpcore.AsyncConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=TCPBackend(),
    )
    return transport
