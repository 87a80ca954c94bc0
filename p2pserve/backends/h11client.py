"""A lean HTTP/1.1 client for one backend server: h11 over trio sockets.

What the backend client needs and nothing more: requests to one origin (``http://`` or
``https://``), persistent connections, the response body as it arrives. Per request it
does one ``send`` (head and body together), one h11 state machine cycle and no task, no
generator and no context manager on the hot path. httpx did the same job with four layers
(client, transport, connection pool, connection) and two writes: it was the executor's
largest single cost (``docs/benchmarks.md``).

Connections: at most ``max_connections`` open (a request waits for a free one), idle ones
kept newest first, at most ``max_keepalive`` of them (default: ``max_connections``: a
node that runs that many requests at once reconnects for none), each for ``keepalive_s`` seconds
(trio's clock; 4 s by default, under the 5 s after which uvicorn (vLLM, SGLang) and
llama-server close an idle connection). An idle connection the server has closed is
readable (EOF), so it is dropped before use, not written to. The server may still close it
as we reuse it (the two idle timers race): when a reused connection ends before any byte
of an answer, the request did not run, and it is sent once more on a new connection; no
other request is ever retried. A response not read to its end closes its connection on
:meth:`H11Response.aclose`: that is how vLLM and SGLang learn that a generation was
abandoned. A response read to its end returns its connection to the pool, unless either
side asked to close or the server sent more than the response.

``user:password@`` in the base URL is sent as Basic authentication (unless an
``Authorization`` header is given). No HTTP proxy, no redirects, no HTTP/2: a backend is an
OpenAI-compatible server the operator points the node at. Errors are those of
:mod:`p2pserve.backends.http`.
"""

from __future__ import annotations

import base64
import math
import ssl
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import h11
import trio

from p2pserve.backends.http import HTTPBroken, HTTPResponse, HTTPTimeout, HTTPUnreachable, read_up_to

__all__ = ["H11Client", "H11Response"]

_READ_BYTES = 64 * 1024
_MAX_HEAD = 64 * 1024
"""Largest response head accepted (status line and headers)."""


class _Conn:
    __slots__ = ("h11", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self.idle_since = 0.0

    def is_dropped(self) -> bool:
        """Whether the server closed (or sent unexpected bytes on) this idle connection."""
        s = self.stream.transport_stream if isinstance(self.stream, trio.SSLStream) else self.stream
        assert isinstance(s, trio.SocketStream)
        return s.socket.is_readable()


class H11Response:
    """A response whose head has arrived (see :class:`~p2pserve.backends.http.HTTPResponse`)."""

    __slots__ = ("_client", "_conn", "_ended", "headers", "status")

    def __init__(self, client: H11Client, conn: _Conn, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self._ended = False
        self.status = status
        self.headers = headers

    async def next_chunk(self) -> bytes | None:
        conn = self._conn
        if conn is None:
            return None
        while not self._ended:
            event = _next_event(conn)
            if event is h11.NEED_DATA:
                try:
                    data = await conn.stream.receive_some(_READ_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise HTTPBroken(f"the connection broke mid-response: {exc!r}") from exc
                conn.h11.receive_data(data)
            elif isinstance(event, h11.Data):
                if event.data:
                    return self._with_buffered(conn, bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
            else:
                raise HTTPBroken(f"unexpected HTTP event from the server: {type(event).__name__}")
        self._conn = None
        await self._client._release(conn, ended=True)
        return None

    def _with_buffered(self, conn: _Conn, first: bytes) -> bytes:
        """``first`` and the body bytes h11 already holds (one piece for a burst of events);
        an end of the message found on the way is remembered for the next call."""
        parts = [first]
        while conn.h11.trailing_data[0]:
            event = _next_event(conn)
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
                break
            elif event is h11.NEED_DATA:
                break
            else:
                raise HTTPBroken(f"unexpected HTTP event from the server: {type(event).__name__}")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aread(self, limit: int) -> bytes:
        return await read_up_to(self, limit)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # not read to its end: the connection cannot be reused
            await self._client._release(conn, ended=False)


def _next_event(conn: _Conn) -> object:
    try:
        return conn.h11.next_event()
    except h11.RemoteProtocolError as exc:
        raise HTTPBroken(f"the server's response is not valid HTTP/1.1: {exc}") from exc


class H11Client:
    """Requests to one server; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = 5.0,
        max_connections: int = 64,
        max_keepalive: int | None = None,
        keepalive_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be http://HOST[:PORT][/PATH] or https://..., not {base_url!r}")
        self.tls = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.tls else 80)
        self.prefix = url.path.rstrip("/")
        authority = url.netloc.rpartition("@")[2]
        self._headers = [("Host", authority), ("User-Agent", "p2pserve")]
        if url.username is not None and not any(k.lower() == "authorization" for k in headers or {}):
            basic = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
            self._headers.append(("Authorization", "Basic " + base64.b64encode(basic).decode()))
        self._headers += [*(headers or {}).items()]
        self.connect_timeout = connect_timeout
        self.max_keepalive = max_keepalive if max_keepalive is not None else max_connections
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context if ssl_context is not None else (ssl.create_default_context() if self.tls else None)
        self._slots = trio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._closed = False

    async def request(self, method: str, path: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> HTTPResponse:
        if self._closed:
            raise HTTPUnreachable("the client is closed")
        head = [*self._headers, *(headers or {}).items()]
        if body is not None:
            head += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        await self._slots.acquire()
        try:
            conn, reused = await self._checkout()
            try:
                return await self._exchange(conn, method, path, head, body)
            except HTTPUnreachable:
                with trio.CancelScope(shield=True):
                    await conn.stream.aclose()
                if not reused:
                    raise
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.stream.aclose()
                raise
            # A kept-alive connection the server closed as we reused it (the two idle timers
            # race): it ended before any byte of an answer, so the request never ran; once
            # more, on a new connection.
            conn = await self._connect()
            try:
                return await self._exchange(conn, method, path, head, body)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.stream.aclose()
                raise
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, conn: _Conn, method: str, path: str, head: list[tuple[str, str]],
                        body: bytes | None) -> H11Response:
        try:
            out = conn.h11.send(h11.Request(method=method, target=self.prefix + path, headers=head)) or b""
            if body:
                out += conn.h11.send(h11.Data(data=body)) or b""
            out += conn.h11.send(h11.EndOfMessage()) or b""
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:  # e.g. a key that is not latin-1
            raise HTTPBroken(f"cannot send this request to {self.host}:{self.port}: {exc}") from exc
        try:
            await conn.stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise HTTPUnreachable(f"could not send the request to {self.host}:{self.port}: {exc!r}") from exc
        got_bytes = False
        while True:
            event = _next_event(conn)
            if event is h11.NEED_DATA:
                try:
                    data = await conn.stream.receive_some(_READ_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    broke = HTTPBroken if got_bytes else HTTPUnreachable  # after a byte: it ran
                    raise broke(f"the connection to {self.host}:{self.port} broke: {exc!r}") from exc
                if not data and not got_bytes:
                    raise HTTPUnreachable(f"{self.host}:{self.port} closed the connection without answering")
                got_bytes = True
                conn.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                return H11Response(self, conn, event.status_code, list(event.headers))
            elif isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like
            else:
                raise HTTPBroken(f"unexpected HTTP event from the server: {type(event).__name__}")

    async def _checkout(self) -> tuple[_Conn, bool]:
        """An idle connection (True) if one is fresh and still open, else a new one (False)."""
        now = trio.current_time()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.keepalive_s and not conn.is_dropped():
                return conn, True
            with trio.CancelScope(shield=True):
                await conn.stream.aclose()
        return await self._connect(), False

    async def _connect(self) -> _Conn:
        where = f"{self.host}:{self.port}"
        try:
            with trio.fail_after(math.inf if self.connect_timeout is None else self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
                if self._ssl is not None:
                    tls = trio.SSLStream(stream, self._ssl, server_hostname=self.host, https_compatible=True)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            await stream.aclose()
                        raise
                    stream = tls
        except trio.TooSlowError as exc:
            raise HTTPTimeout(f"connecting to {where} took more than {self.connect_timeout} s") from exc
        except (OSError, trio.BrokenResourceError) as exc:
            raise HTTPUnreachable(f"cannot connect to {where}: {exc}") from exc
        return _Conn(stream)

    async def _release(self, conn: _Conn, *, ended: bool) -> None:
        """A response is done with: its slot is free; its connection idles if it may be
        reused (read to its end, both sides done, room in the pool), else is closed."""
        self._slots.release()
        if ended and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE and not self._closed \
                and len(self._idle) < self.max_keepalive and not conn.h11.trailing_data[0]:
            conn.h11.start_next_cycle()
            conn.idle_since = trio.current_time()
            self._idle.append(conn)
            return
        with trio.CancelScope(shield=True):
            await conn.stream.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            for conn in idle:
                await conn.stream.aclose()

