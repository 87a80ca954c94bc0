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

Bounds: at most ``max_connections`` connections (more wait in the kernel's backlog), a
request head of at most ``max_head`` bytes (431 beyond), ``idle_s`` seconds of silence
while waiting for a request or its body (then the connection is closed: slow-loris
clients hold nothing for long). A client that hangs up mid-response is told to the app
as ``http.disconnect`` (from ``receive``), and writes to it are dropped, never raised.
An app failure before the response started is a 500 in OpenAI's error shape; after, the
connection is closed (the client sees a cut response).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import h11
import trio

__all__ = ["serve_asgi"]

log = logging.getLogger("p2pserve.http")

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

_READ_BYTES = 64 * 1024
_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_ASGI = {"version": "3.0", "spec_version": "2.3"}


def _error(message: str, code: str) -> bytes:
    """An error body in OpenAI's shape."""
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()


class _Exchange:
    """One request on a connection: the ASGI ``receive`` and ``send`` of the app's call."""

    def __init__(self, conn: _Connection, head_request: bool) -> None:
        self.conn = conn
        self.head_request = head_request
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
            await c.write(h.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        parts: list[bytes] = []
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                self.disconnected = True
                return {"type": "http.disconnect"}
            if event is h11.NEED_DATA:
                if parts:  # hand out what arrived; read more at the next call
                    return {"type": "http.request", "body": b"".join(parts), "more_body": True}
                if not await c.read(c.server.idle_s):
                    self.disconnected = True
                    return {"type": "http.disconnect"}
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            else:  # ConnectionClosed mid-body
                self.disconnected = True
                return {"type": "http.disconnect"}

    async def _wait_disconnect(self) -> dict[str, Any]:
        """After the body: block until the client hangs up (bytes of a pipelined next
        request are kept for it), or at once when the response is complete."""
        c = self.conn
        while not (self.disconnected or self.complete):
            try:
                data = await c.stream.receive_some(_READ_BYTES)
            except _ERRORS:
                data = b""
            if not data:
                self.disconnected = True
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
            if not more and not self.head_request and not any(n in (b"content-length", b"transfer-encoding")
                                                             for n, _ in head.headers):
                head = h11.Response(status_code=head.status_code,
                                    headers=[*head.headers, (b"content-length", str(len(body)).encode())])
            out = h.send(head) or b""
        if body and not self.head_request:
            out += h.send(h11.Data(data=body)) or b""
        if not more:
            out += h.send(h11.EndOfMessage()) or b""
            self.complete = True
        if out and not self.disconnected:
            try:
                await self.conn.stream.send_all(out)
            except _ERRORS:
                self.disconnected = True  # writes to a client that left are dropped


class _Connection:
    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_head)

    async def read(self, timeout: float) -> bool:
        """Feed the next bytes to h11; False on EOF, a broken connection or ``timeout``."""
        with trio.move_on_after(timeout):
            try:
                data = await self.stream.receive_some(_READ_BYTES)
            except _ERRORS:
                return False
            self.h11.receive_data(data)
            return bool(data)
        return False

    async def write(self, data: bytes) -> None:
        if data:
            await self.stream.send_all(data)

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
        while True:
            buffered = self.h11.trailing_data[0]
            if len(buffered) > self.server.max_head and b"\r\n\r\n" not in buffered[:self.server.max_head + 4]:
                # h11 bounds only a head still incomplete; this bounds a complete one too
                await self._refuse(431, f"the request head exceeds {self.server.max_head} bytes",
                                   "request_header_fields_too_large")
                return None
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                code = "request_header_fields_too_large" if status == 431 else "bad_request"
                await self._refuse(status, f"bad HTTP request: {exc}", code)
                return None
            if event is h11.NEED_DATA:
                if not await self.read(self.server.idle_s):
                    return None
            elif isinstance(event, h11.Request):
                return event
            else:  # ConnectionClosed (or a stray event): nothing more on this connection
                return None

    async def _refuse(self, status: int, message: str, code: str) -> None:
        body = _error(message, code)
        try:
            h = h11.Connection(h11.SERVER)  # the broken one cannot send; a fresh one just renders
            h.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            h.next_event()
            out = h.send(h11.Response(status_code=status, headers=[
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")])) or b""
            await self.write(out + body)
        except _ERRORS:
            pass

    async def _one(self) -> bool:
        """Serve one request; whether the connection may carry another."""
        request = await self._next_request()
        if request is None:
            return False
        ex = _Exchange(self, request.method == b"HEAD")
        try:
            await self.server.app(self._scope(request), ex.receive, ex.send)
        except Exception:
            log.exception("the API failed to answer %s %s", request.method.decode(), request.target.decode("latin-1"))
            if ex.started is None and not ex.disconnected:
                ex.started = h11.Response(status_code=500, headers=[(b"content-type", b"application/json")])
                await ex.send({"type": "http.response.body", "body": _error(
                    "internal error: the node failed to answer this request (its log has the details)",
                    "internal_error")})
            else:
                return False
        if not ex.complete or ex.disconnected:
            return False
        if not ex.body_done:  # the app answered without reading the body: skip it
            while True:
                msg = await ex.receive()
                if msg["type"] != "http.request" or not msg.get("more_body"):
                    break
            if ex.disconnected:
                return False
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

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
            "client": self.server.peer(self.stream),
            "server": self.server.local,
        }


class _Server:
    def __init__(self, app: ASGIApp, *, max_head: int, idle_s: float, local: tuple[str, int]) -> None:
        self.app = app
        self.max_head = max_head
        self.idle_s = idle_s
        self.local = local

    @staticmethod
    def peer(stream: trio.SocketStream) -> tuple[str, int] | None:
        try:
            name = stream.socket.getpeername()
        except OSError:
            return None
        return (str(name[0]), int(name[1]))


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_connections: int = 1024,
    max_head: int = 64 * 1024,
    idle_s: float = 30.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``started`` with the base URL (the
    bound port when ``port`` is 0). OSError when the address cannot be bound."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    server = _Server(app, max_head=max_head, idle_s=idle_s, local=(str(bound[0]), int(bound[1])))
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
    finally:
        limiter.release()
