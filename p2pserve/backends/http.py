"""The HTTP seam under :class:`~p2pserve.backends.openai.OpenAIBackend`: what it needs of an
HTTP client, the errors such a client raises, and the adapter for an httpx transport.

Two clients implement :class:`HTTPClient`:

* :class:`~p2pserve.backends.h11client.H11Client`, the product's: HTTP/1.1 on h11 over trio
  sockets (``http://`` and ``https://`` servers), persistent connections, one write per
  request. It exists because the serving hop's biggest single cost was httpx's client stack
  (``docs/benchmarks.md``).
* :class:`HttpxClient`, over any ``httpx.AsyncBaseTransport``: the in-process fake backend's
  ``MockTransport`` (tests, ``kind: fake`` models) and whatever transport a caller injects.

Both raise only :class:`HTTPError` subclasses, so the backend maps one family of errors:
:class:`HTTPUnreachable` (no connection, or it broke before any response byte),
:class:`HTTPTimeout` (connecting took too long) and :class:`HTTPBroken` (the response broke
or is not HTTP). Every other wait is the caller's trio deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import httpx

__all__ = [
    "HTTPBroken",
    "HTTPClient",
    "HTTPError",
    "HTTPResponse",
    "HTTPTimeout",
    "HTTPUnreachable",
    "HttpxClient",
    "read_up_to",
]


class HTTPError(Exception):
    """A request to the backend server failed (see the subclasses)."""


class HTTPUnreachable(HTTPError):
    """No connection to the server, or it broke before the response began."""


class HTTPTimeout(HTTPError):
    """Connecting to the server took longer than the connect timeout."""


class HTTPBroken(HTTPError):
    """The response broke off or is not valid HTTP/1.1."""


class HTTPResponse(Protocol):
    """A response whose head has arrived; its body is read with :meth:`next_chunk`."""

    @property
    def status(self) -> int: ...

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body (never empty), None at its end."""
        ...

    async def aread(self, limit: int) -> bytes:
        """The rest of the body, up to ``limit`` bytes (more is dropped with the connection)."""
        ...

    async def aclose(self) -> None:
        """Done with the response: an unread rest closes the connection (which tells
        vLLM/SGLang to stop generating); a fully read one may be reused."""
        ...


async def read_up_to(response: HTTPResponse, limit: int) -> bytes:
    """The rest of ``response``'s body, up to ``limit`` bytes (what ``aread`` does)."""
    out = bytearray()
    while len(out) < limit:
        chunk = await response.next_chunk()
        if chunk is None:
            break
        out += chunk
    return bytes(out[:limit])


class HTTPClient(Protocol):
    async def request(self, method: str, path: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> HTTPResponse:
        """Send a request (``path`` below the base URL) and wait for the response head."""
        ...

    async def aclose(self) -> None: ...


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        self._chunks: AsyncIterator[bytes] = stream.__aiter__()

    @property
    def status(self) -> int:
        return self._response.status_code

    async def next_chunk(self) -> bytes | None:
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                return None
            except httpx.HTTPError as exc:
                raise HTTPBroken(f"{type(exc).__name__}: {exc}") from exc
            if chunk:
                return chunk

    async def aread(self, limit: int) -> bytes:
        return await read_up_to(self, limit)

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        await self._response.aclose()


class HttpxClient:
    """:class:`HTTPClient` over an httpx transport (``MockTransport`` in tests)."""

    def __init__(self, base_url: str, transport: httpx.AsyncBaseTransport, headers: Mapping[str, str] | None = None,
                 connect_timeout: float | None = None) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, transport=transport, headers=dict(headers or {}),
                                         timeout=httpx.Timeout(connect=connect_timeout, read=None, write=None, pool=None))

    async def request(self, method: str, path: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> HTTPResponse:
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        request = self._client.build_request(method, path, content=body, headers=all_headers)
        try:
            return _HttpxResponse(await self._client.send(request, stream=True))
        except httpx.TimeoutException as exc:
            raise HTTPTimeout(f"{type(exc).__name__}: {exc}") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise HTTPUnreachable(f"{type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise HTTPBroken(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
