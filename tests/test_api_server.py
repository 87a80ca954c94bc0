"""The node's lean ASGI server (p2pserve.api.server) over real loopback sockets: write merging,
keep-alive and pipelining, HTTP/1.0, HEAD, 100-continue, bad and oversized heads, slow
clients, app failures, client hang-ups, the connection limit."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.lowlevel

from p2pserve.api.server import serve_asgi

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answers ``{method, path, query, body}``; ``/stream`` streams three pieces; ``/boom``
    fails before answering, ``/boom-late`` after the head."""
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for piece in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        if scope["query_string"] == b"late":
            raise RuntimeError("late")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    out = json.dumps({"method": scope["method"], "path": scope["path"], "query": scope["query_string"].decode(),
                      "body": body.decode(), "version": scope["http_version"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


async def start(nursery: trio.Nursery, app: Any = echo, **kw: Any) -> int:
    url = await nursery.start(partial(serve_asgi, app, "127.0.0.1", 0, **kw))
    return int(url.rsplit(":", 1)[1])


async def connect(port: int, raw: bytes = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") -> trio.SocketStream:
    """A connection to the server on ``port`` that has sent ``raw`` (default: a GET of /)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(raw)
    return stream


async def exchange(port: int, raw: bytes, *, until_close: bool = True) -> bytes:
    async with await connect(port, raw) as stream:
        out = b""
        with trio.fail_after(10):
            while until_close:
                data = await stream.receive_some(65536)
                if not data:
                    break
                out += data
        return out


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each complete response in ``raw`` (Content-Length or chunked)."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    out: list[tuple[int, bytes]] = []
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status, body = event.status_code, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append((status, body))
            if conn.their_state is not h11.DONE or conn.our_state is not h11.DONE:
                return out
            conn.start_next_cycle()
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        else:
            return out


async def test_keep_alive_pipelining_and_http10() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        two = (b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
               b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        got = responses(await exchange(port, two))
        assert [s for s, _ in got] == [200, 200]
        first, second = (json.loads(b) for _, b in got)
        assert first == {"method": "POST", "path": "/a b", "query": "x=1", "body": "hi", "version": "1.1"}
        assert second["path"] == "/c"
        old = await exchange(port, b"GET /old HTTP/1.0\r\n\r\n")  # answered, then closed
        assert old.startswith(b"HTTP/1.1 200") and json.loads(old.split(b"\r\n\r\n", 1)[1])["version"] == "1.0"
        chunked = b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" \
                  b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        assert json.loads(responses(await exchange(port, chunked))[0][1])["body"] == "abcde"
        nursery.cancel_scope.cancel()


async def test_a_streamed_response_takes_one_write_per_body_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head leaves with the first body message, the last piece with the terminator."""
    writes: list[bytes] = []
    real = trio.SocketStream.send_all

    async def counting(self: trio.SocketStream, data: bytes) -> None:
        writes.append(bytes(data))
        await real(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting)
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        raw = await exchange(port, b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        nursery.cancel_scope.cancel()
    server_writes = [w for w in writes if w.startswith(b"HTTP/1.1") or b"\r\n" in w and not w.startswith(b"GET")]
    assert len(server_writes) == 4  # head+"one ", "two ", "three", terminator
    assert server_writes[0].startswith(b"HTTP/1.1 200") and server_writes[0].endswith(b"4\r\none \r\n")
    assert server_writes[-1] == b"0\r\n\r\n"
    assert responses(raw) == [(200, b"one two three")]


async def test_head_100_continue_and_whole_bodies_get_a_length() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        head = await exchange(port, b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # no body
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
                                  b"Connection: close\r\n\r\n")
            with trio.fail_after(10):
                assert (await stream.receive_some(1000)).startswith(b"HTTP/1.1 100")
                await stream.send_all(b"body")
                rest = b""
                while data := await stream.receive_some(65536):
                    rest += data
        assert b"content-length: " in rest.lower() and json.loads(rest.split(b"\r\n\r\n", 1)[1])["body"] == "body"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_and_oversized_heads(raw: bytes, status: int) -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        out = await exchange(port, raw)
        assert out.startswith(b"HTTP/1.1 %d" % status)
        error = json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["type"] == "invalid_request_error" and error["code"] in ("bad_request", "request_header_fields_too_large")
        nursery.cancel_scope.cancel()


async def test_a_silent_or_slow_client_is_dropped_after_idle_s() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, idle_s=0.2)
        assert await exchange(port, b"") == b""  # said nothing: closed
        assert await exchange(port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf") == b""
        nursery.cancel_scope.cancel()


async def test_app_failures(caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        out = await exchange(port, b"GET /boom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 500")
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "internal_error"
        late = await exchange(port, b"GET /stream?late HTTP/1.1\r\nHost: h\r\n\r\n")  # closed mid-stream
        assert b"three" in late and not late.endswith(b"0\r\n\r\n")
        nursery.cancel_scope.cancel()
    assert sum("the API failed to answer" in r.getMessage() for r in caplog.records) == 2


async def test_a_client_that_hangs_up_is_told_to_the_app() -> None:
    told = trio.Event()

    async def waits(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        assert (await receive())["type"] == "http.disconnect"
        told.set()
        await send({"type": "http.response.body", "body": b"dropped, not raised", "more_body": False})

    async with trio.open_nursery() as nursery:
        port = await start(nursery, waits)
        stream = await connect(port)
        with trio.fail_after(10):
            assert b"first" in await stream.receive_some(1000)
            await stream.aclose()
            await told.wait()
        nursery.cancel_scope.cancel()


async def test_the_connection_limit_holds_new_connections_back() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, max_connections=1)
        first = await connect(port, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
        with trio.fail_after(10):
            assert responses(await first.receive_some(65536))[0][0] == 200  # keep-alive: held open
        second = await connect(port, b"GET /2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        with trio.move_on_after(0.3):  # not served while the first holds the only slot
            data = await second.receive_some(65536)
            raise AssertionError(f"served past the limit: {data!r}")
        await first.aclose()
        with trio.fail_after(10):
            assert responses(await second.receive_some(65536))[0][0] == 200
        await second.aclose()
        nursery.cancel_scope.cancel()


# -- bounds against hostile or broken clients (review of the server) ----------------------------


async def test_a_head_sent_slowly_gets_408_and_a_body_sent_slowly_is_dropped() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, head_s=0.3, body_s=0.3, idle_s=5.0)
        with trio.fail_after(10):  # one byte a while: the head's time runs from its first byte
            out = await exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n")
        assert out.startswith(b"HTTP/1.1 408") and b"request_timeout" in out
        with trio.fail_after(10):  # a body that never completes: the connection is dropped
            out = await exchange(port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nhalf")
        assert out == b""
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_is_dropped_and_the_app_told() -> None:
    told = trio.Event()

    async def floods(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})

        async def watch() -> None:
            assert (await receive())["type"] == "http.disconnect"
            told.set()

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            while not told.is_set():  # far more than the socket buffers hold
                await send({"type": "http.response.body", "body": b"x" * 1_000_000, "more_body": True})
                await trio.lowlevel.checkpoint()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with trio.open_nursery() as nursery:
        port = await start(nursery, floods, idle_s=0.5)
        stream = await connect(port)
        with trio.fail_after(20):  # never reads: the server's write times out
            await told.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_client_flooding_during_its_response_is_dropped() -> None:
    told = trio.Event()

    async def slow(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert (await receive())["type"] == "http.disconnect"  # what it sent past max_head
        told.set()

    async with trio.open_nursery() as nursery:
        port = await start(nursery, slow, max_head=4096)
        stream = await connect(port)
        with trio.fail_after(10):
            while not told.is_set():
                try:
                    await stream.send_all(b"junk" * 1024)
                except trio.BrokenResourceError:
                    break
            await told.wait()
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_no_response_or_a_failure_before_any_byte_is_a_500() -> None:
    async def silent(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["path"] == "/started":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("after the head, before any byte left")

    async with trio.open_nursery() as nursery:
        port = await start(nursery, silent)
        for path in (b"/nothing", b"/started"):
            got = responses(await exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
            assert got and got[0][0] == 500 and json.loads(got[0][1])["error"]["type"] == "server_error"
        nursery.cancel_scope.cancel()


async def test_smuggling_shapes_are_answered_then_closed_and_unread_bodies_drained_only_when_small() -> None:
    async def ignores_body(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        status = 204 if scope["path"] == "/empty" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with trio.open_nursery() as nursery:
        port = await start(nursery, ignores_body, max_head=4096)
        both = (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        assert [s for s, _ in responses(await exchange(port, both))] == [200]  # closed after the first
        small = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789GET /b HTTP/1.1\r\nHost: h\r\n" \
                b"Connection: close\r\n\r\n"
        assert [s for s, _ in responses(await exchange(port, small))] == [200, 200]  # drained, kept alive
        big = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10_000
        assert [s for s, _ in responses(await exchange(port, big))] == [200]  # not drained: closed
        empty = await exchange(port, b"GET /empty HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert empty.startswith(b"HTTP/1.1 204") and b"content-length" not in empty.lower()
        nursery.cancel_scope.cancel()
