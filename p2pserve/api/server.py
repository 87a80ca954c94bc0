"""The node's HTTP/1.1 server: a lean ASGI server on h11 over trio sockets.

Why not Hypercorn (which served the API before): per streamed response it wrote the head,
each body message and the chunked terminator separately (four or more writes where two
do), and spent a task and several event-object layers per request; on a gateway that was
the largest cost after libp2p (``docs/benchmarks.md``). Here a response's head leaves with
its first body message, a last body message leaves with the terminator, and a request
runs in its connection's task.

What it serves: the ASGI 3 ``http`` scope (no lifespan, no websockets: the node's app needs
neither), HTTP/1.1 keep-alive and HTTP/1.0, ``Expect: 100-continue``, HEAD (the body is
dropped). One task per connection; requests on a connection run one after another.

Bounds, since the API faces anyone who can reach it:

* at most ``max_connections`` connections (more wait in the kernel's backlog);
* a request head of at most ``max_head`` bytes (431), which must arrive within ``head_s``
  of its first byte; a connection waits ``idle_s`` for the next request's first byte;
* a request body must arrive within ``body_s`` of its head, with no silence over ``idle_s``;
* a write that cannot finish within ``idle_s`` (a client that stopped reading) drops the
  client; while a response runs, at most ``max_head`` bytes of what the client sends next
  (a pipelined request) are kept, more drops it;
* a request with both ``Content-Length`` and ``Transfer-Encoding`` (or chunked on HTTP/1.0)
  is answered, then its connection closed (RFC 9112 §6.1: no smuggling through a proxy);
* a body the app did not read is drained only when small (``max_head``, within a second),
  else the connection is closed.

A client that hangs up (or is dropped) mid-response is told to the app as
``http.disconnect`` (from ``receive``), and writes to it are dropped, never raised. An app
failure, or an app that returns without a response, before any byte of the response left
is a 500 in OpenAI's error shape; after, the connection is closed (the client sees a cut
response).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import h11
import trio

from p2pserve.backends.openai_format import error_object

__all__ = ["serve_asgi"]

log = logging.getLogger("p2pserve.http")

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

_READ_BYTES = 64 * 1024
_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_NO_BODY_STATUS = frozenset({204, 304})
_DRAIN_S = 1.0


def _error(message: str, code: str, kind: str = "invalid_request_error") -> bytes:
    """An error body in OpenAI's shape."""
    return json.dumps(error_object(message, kind, code)).encode()


_INTERNAL = _error("internal error: the node failed to answer this request (its log has the details)",
                   "internal_error", "server_error")


class _Exchange:
    """One request on a connection: the ASGI ``receive`` and ``send`` of the app's call."""

    def __init__(self, conn: _Connection, head_request: bool, body_deadline: float) -> None:
        self.conn = conn
        self.head_request = head_request
        self.body_deadline = body_deadline
        self.body_done = False
        self.started: h11.Response | None = None
        self.complete = False
        self.disconnected = False

    async def receive(self) -> dict[str, Any]:
        c = self.conn
        if self.body_done or self.disconnected:
            return await self._wait_disconnect()
        h = c.h11
        if h.they_are_waiting_for_100_continue and h.our_state is h11.SEND_RESPONSE:
            if not await c.write(h.send(h11.InformationalResponse(status_code=100, headers=[])) or b""):
                return self._gone()
        parts: list[bytes] = []
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                return self._gone()
            if event is h11.NEED_DATA:
                if parts:  # hand out what arrived; read more at the next call
                    return {"type": "http.request", "body": b"".join(parts), "more_body": True}
                deadline = min(trio.current_time() + c.server.idle_s, self.body_deadline)
                if await c.read(deadline) <= 0:
                    return self._gone()
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            else:  # ConnectionClosed mid-body
                return self._gone()

    def _gone(self) -> dict[str, Any]:
        self.disconnected = True
        return {"type": "http.disconnect"}

    async def _wait_disconnect(self) -> dict[str, Any]:
        """After the body: block until the client hangs up (bytes of a pipelined next
        request are kept for it, up to ``max_head``), or at once when the response is
        complete or the client was dropped."""
        c = self.conn
        kept = 0
        while not (self.disconnected or self.complete):
            try:
                data = await c.stream.receive_some(_READ_BYTES)
            except _ERRORS:
                data = b""
            kept += len(data)
            if not data or kept > c.server.max_head:
                self.disconnected = True  # gone, or sending far more than a next request's head
                break
            c.h11.receive_data(data)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started is not None:
                raise RuntimeError("http.response.start sent twice")
            self.started = h11.Response(status_code=message["status"], headers=list(message.get("headers") or []))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if self.started is None:
            raise RuntimeError("http.response.body before http.response.start")
        if self.complete:
            return
        body: bytes = message.get("body") or b""
        more = bool(message.get("more_body", False))
        h = self.conn.h11
        out = b""
        if h.our_state is h11.SEND_RESPONSE:
            head = self.started
            if (not more and not self.head_request and head.status_code not in _NO_BODY_STATUS
                    and not any(n in (b"content-length", b"transfer-encoding") for n, _ in head.headers)):
                head = h11.Response(status_code=head.status_code,
                                    headers=[*head.headers, (b"content-length", str(len(body)).encode())])
            out = h.send(head) or b""
        if body and not self.head_request and self.started.status_code not in _NO_BODY_STATUS:
            out += h.send(h11.Data(data=body)) or b""
        if not more:
            out += h.send(h11.EndOfMessage()) or b""
            self.complete = True
        if out and not self.disconnected and not await self.conn.write(out):
            self.disconnected = True  # writes to a client that left (or stopped reading) are dropped


def _smuggling_risk(request: h11.Request) -> bool:
    """Both Content-Length and Transfer-Encoding, or chunked on HTTP/1.0: answer, then close."""
    names = {n for n, _ in request.headers}
    return b"transfer-encoding" in names and (b"content-length" in names or request.http_version == b"1.0")


def _head_size(request: h11.Request) -> int:
    """Bytes of ``request``'s head as sent (near enough: h11 strips whitespace)."""
    return len(request.method) + len(request.target) + 12 + sum(len(n) + len(v) + 4 for n, v in request.headers)


class _Connection:
    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_head)
        self.local = _address(stream, "getsockname") or server.local
        self.peer = _address(stream, "getpeername")

    async def read(self, deadline: float) -> int:
        """Feed the next bytes to h11: how many (0 on EOF or a broken connection, -1 when
        ``deadline`` passed first)."""
        with trio.move_on_at(deadline):
            try:
                data = await self.stream.receive_some(_READ_BYTES)
            except _ERRORS:
                return 0
            self.h11.receive_data(data)
            return len(data)
        return -1

    async def write(self, data: bytes) -> bool:
        """Send ``data`` within ``idle_s``; False (and the connection closed, so that a task
        waiting to read it wakes) when it could not."""
        if not data:
            return True
        with trio.move_on_after(self.server.idle_s):
            try:
                await self.stream.send_all(data)
                return True
            except _ERRORS:
                pass
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
        return False

    async def run(self) -> None:
        try:
            while await self._one():
                self.h11.start_next_cycle()
        except _ERRORS:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _next_request(self) -> h11.Request | None:
        s = self.server
        received = len(self.h11.trailing_data[0])  # a pipelined head may be here already
        deadline = trio.current_time() + (s.head_s if received else s.idle_s)
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                code = "request_header_fields_too_large" if status == 431 else "bad_request"
                await self._refuse(status, f"bad HTTP request: {exc}", code)
                return None
            if event is h11.NEED_DATA:
                got = await self.read(deadline)
                if got == -1 and received:
                    await self._refuse(408, f"the request head did not arrive within {s.head_s:g} s", "request_timeout")
                if got <= 0:
                    return None
                if not received:  # its first bytes: the rest of the head has head_s
                    deadline = min(deadline, trio.current_time() + s.head_s)
                received += got
            elif isinstance(event, h11.Request):
                if _head_size(event) > s.max_head:  # h11 bounds only a head still incomplete
                    await self._refuse(431, f"the request head exceeds {s.max_head} bytes",
                                       "request_header_fields_too_large")
                    return None
                return event
            else:  # ConnectionClosed (or a stray event): nothing more on this connection
                return None

    async def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` and close gently: stop sending, then read (briefly, boundedly)
        what the client still sends, so that closing does not reset the answer away."""
        body = _error(message, code)
        h = h11.Connection(h11.SERVER)  # the broken one cannot send; a fresh one just renders
        h.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        h.next_event()
        out = h.send(h11.Response(status_code=status, headers=[
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")])) or b""
        if not await self.write(out + body):
            return
        try:
            await self.stream.send_eof()
            with trio.move_on_after(_DRAIN_S):
                drained = 0
                while drained < self.server.max_head and (data := await self.stream.receive_some(_READ_BYTES)):
                    drained += len(data)
        except _ERRORS:
            pass

    async def _one(self) -> bool:
        """Serve one request; whether the connection may carry another."""
        request = await self._next_request()
        if request is None:
            return False
        ex = _Exchange(self, request.method == b"HEAD", trio.current_time() + self.server.body_s)
        try:
            await self.server.app(self._scope(request), ex.receive, ex.send)
        except Exception:
            log.exception("the API failed to answer %s %s", request.method.decode(), request.target.decode("latin-1"))
            if not await self._internal_error(ex):
                return False
        if self.h11.our_state is h11.SEND_RESPONSE and not ex.disconnected:  # the app sent no response
            log.error("the API sent no response to %s %s", request.method.decode(), request.target.decode("latin-1"))
            if not await self._internal_error(ex):
                return False
        if not ex.complete or ex.disconnected:
            return False
        if not ex.body_done and not await self._skip_body(ex):
            return False
        if _smuggling_risk(request):
            return False
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _internal_error(self, ex: _Exchange) -> bool:
        """A 500 if no byte of the response left yet; whether one was sent."""
        if ex.disconnected or self.h11.our_state is not h11.SEND_RESPONSE:
            return False
        ex.started, ex.complete = h11.Response(status_code=500, headers=[(b"content-type", b"application/json")]), False
        await ex.send({"type": "http.response.body", "body": _INTERNAL})
        return ex.complete and not ex.disconnected

    async def _skip_body(self, ex: _Exchange) -> bool:
        """Read past a body the app left unread, if small; whether the connection may go on."""
        if self.h11.they_are_waiting_for_100_continue:
            return False  # the client has not sent it: close instead of asking for it
        read = 0
        with trio.move_on_after(_DRAIN_S):
            while not ex.body_done and not ex.disconnected and read <= self.server.max_head:
                msg = await ex.receive()
                read += len(msg.get("body", b""))
        return ex.body_done and not ex.disconnected

    def _scope(self, request: h11.Request) -> dict[str, Any]:
        target = request.target
        raw_path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.http_version.decode(),
            "method": request.method.decode(),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": list(request.headers),
            "client": self.peer,
            "server": self.local,
        }


def _address(stream: trio.SocketStream, which: str) -> tuple[str, int] | None:
    try:
        name = getattr(stream.socket, which)()
    except OSError:
        return None
    return (str(name[0]), int(name[1]))


class _Server:
    def __init__(self, app: ASGIApp, *, max_head: int, idle_s: float, head_s: float, body_s: float,
                 local: tuple[str, int]) -> None:
        self.app = app
        self.max_head = max_head
        self.idle_s = idle_s
        self.head_s = head_s
        self.body_s = body_s
        self.local = local


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_connections: int = 1024,
    max_head: int = 64 * 1024,
    idle_s: float = 30.0,
    head_s: float = 10.0,
    body_s: float = 60.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``started`` with the base URL (the
    bound port when ``port`` is 0). OSError when the address cannot be bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    server = _Server(app, max_head=max_head, idle_s=idle_s, head_s=head_s, body_s=body_s,
                     local=(str(bound[0]), int(bound[1])))
    limiter = trio.Semaphore(max_connections)
    shown = f"[{host}]" if ":" in host else host
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, server, limiter, nursery)
        task_status.started(f"http://{shown}:{bound[1]}")


async def _accept_loop(listener: trio.SocketListener, server: _Server, limiter: trio.Semaphore,
                       nursery: trio.Nursery) -> None:
    async with listener:
        while True:
            await limiter.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:  # e.g. out of file descriptors: back off briefly, keep serving
                limiter.release()
                log.warning("accepting an API connection failed: %s", exc)
                await trio.sleep(0.1)
                continue
            except BaseException:
                limiter.release()
                raise
            nursery.start_soon(_serve_connection, server, stream, limiter)


async def _serve_connection(server: _Server, stream: trio.SocketStream, limiter: trio.Semaphore) -> None:
    try:
        await _Connection(server, stream).run()
    except Exception:  # a bug here must not take the other connections down
        log.exception("an API connection failed")
    finally:
        limiter.release()
