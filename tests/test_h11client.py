"""The lean backend HTTP client (p2pserve.backends.h11client) against scripted loopback servers:
one write per request, connection reuse and when it must not happen, every way a server can
fail, the connection limit, keep-alive expiry, a base URL with a path, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from p2pserve.backends.h11client import H11Client
from p2pserve.backends.http import HTTPBroken, HTTPTimeout, HTTPUnreachable

Script = Callable[[trio.SocketStream, "Server"], Awaitable[None]]


@dataclass
class Server:
    """A loopback TCP server running ``script`` per connection; records what it saw."""

    script: Script
    port: int = 0
    connections: int = 0
    first_reads: list[bytes] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    eofs: int = 0
    hung_up: trio.Event = field(default_factory=trio.Event)
    """Set when a script saw the client hang up."""

    async def read_request(self, stream: trio.SocketStream, conn: h11.Connection) -> bool:
        """Read one request (False at EOF); its first read is recorded."""
        first = True
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if first:
                    self.first_reads.append(data)
                    first = False
                if not data:
                    self.eofs += 1
                    return False
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                self.targets.append(event.target.decode())
            elif isinstance(event, h11.EndOfMessage):
                return True

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self.script(stream, self)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def start(nursery: trio.Nursery, script: Script) -> Server:
    server = Server(script)
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


def answer(body: bytes, *, chunked: bool = False, close: bool = False) -> bytes:
    headers = b"Connection: close\r\n" if close else b""
    if chunked:
        mid = len(body) // 2
        data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:mid], body[mid:]) if p) + b"0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + headers + b"\r\n" + data
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + headers + b"\r\n" + body


def keep_alive(body: bytes = b"hello", **kw: bool) -> Script:
    async def script(stream: trio.SocketStream, server: Server) -> None:
        conn = h11.Connection(h11.SERVER)
        while await server.read_request(stream, conn):
            await stream.send_all(answer(body, **kw))
            if kw.get("close"):
                return
            conn = h11.Connection(h11.SERVER)  # the raw answer bypassed h11: a fresh cycle

    return script


async def read_all(client: H11Client, path: str = "/x", body: bytes | None = b'{"a":1}') -> tuple[int, bytes]:
    response = await client.request("POST" if body is not None else "GET", path, body=body)
    try:
        return response.status, await response.aread(1 << 20)
    finally:
        await response.aclose()


async def test_one_write_per_request_and_connections_reused() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, keep_alive(b"x" * 3000, chunked=True))
        client = H11Client(f"http://127.0.0.1:{server.port}/prefix", headers={"Authorization": "Bearer k"})
        for _ in range(3):
            assert await read_all(client, "/v1/chat/completions") == (200, b"x" * 3000)
        assert server.connections == 1
        assert server.targets == ["/prefix/v1/chat/completions"] * 3
        for first in server.first_reads:  # head and body arrived together
            assert first.startswith(b"POST /prefix/v1/chat/completions HTTP/1.1\r\n") and first.endswith(b'{"a":1}')
            assert b"authorization: Bearer k" in first.lower().replace(b"bearer", b"Bearer")
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_response_not_read_to_its_end_closes_its_connection() -> None:
    """Closing early is how vLLM/SGLang learn that a generation was abandoned."""
    async def slow_stream(stream: trio.SocketStream, server: Server) -> None:
        conn = h11.Connection(h11.SERVER)
        await server.read_request(stream, conn)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        assert await stream.receive_some(100) == b""  # the client hung up
        server.eofs += 1
        server.hung_up.set()

    async with trio.open_nursery() as nursery:
        server = await start(nursery, slow_stream)
        client = H11Client(f"http://127.0.0.1:{server.port}")
        with trio.fail_after(10):
            response = await client.request("POST", "/", body=b"{}")
            assert await response.next_chunk() == b"first"
            await response.aclose()
            await server.hung_up.wait()
        assert client._idle == []
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_connection_close_is_not_reused_and_a_dropped_idle_one_is_skipped() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, keep_alive(close=True))
        client = H11Client(f"http://127.0.0.1:{server.port}")
        with trio.fail_after(10):
            assert await read_all(client) == (200, b"hello")
            assert await read_all(client) == (200, b"hello")
        assert server.connections == 2 and client._idle == []

        async def answer_then_hang_up(stream: trio.SocketStream, server: Server) -> None:
            conn = h11.Connection(h11.SERVER)
            await server.read_request(stream, conn)
            await stream.send_all(answer(b"ok"))  # keep-alive, then the server closes it idle

        other = await start(nursery, answer_then_hang_up)
        client2 = H11Client(f"http://127.0.0.1:{other.port}")
        with trio.fail_after(10):
            assert await read_all(client2) == (200, b"ok")
            assert len(client2._idle) == 1
            idle = client2._idle[0].stream
            assert isinstance(idle, trio.SocketStream)
            await trio.lowlevel.wait_readable(idle.socket)  # the server's FIN arrives
            assert client2._idle[0].is_dropped()
            assert await read_all(client2) == (200, b"ok")  # a new connection, no error
        assert other.connections == 2
        await client.aclose()
        await client2.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", HTTPUnreachable),  # closed without answering
        (b"SPAM SPAM SPAM\r\n\r\n", HTTPBroken),  # not HTTP
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", HTTPBroken),  # cut mid-body
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200_000 + b"\r\n\r\n", HTTPBroken),  # a head too large
    ],
)
async def test_servers_that_fail(reply: bytes, error: type[Exception]) -> None:
    async def script(stream: trio.SocketStream, server: Server) -> None:
        await server.read_request(stream, h11.Connection(h11.SERVER))
        if reply:
            await stream.send_all(reply)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        server = await start(nursery, script)
        client = H11Client(f"http://127.0.0.1:{server.port}")
        with trio.fail_after(10), pytest.raises(error):
            await read_all(client)
        assert client._slots.value == 64  # every slot given back
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_refused_and_connect_timeout(monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock) -> None:
    with socket_bound() as port:  # a bound port nobody listens on
        with pytest.raises(HTTPUnreachable, match="cannot connect"):
            await read_all(H11Client(f"http://127.0.0.1:{port}"))

    async def never(host: str, port: int) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(trio, "open_tcp_stream", never)
    mock_clock.autojump_threshold = 0
    with pytest.raises(HTTPTimeout, match="more than 2.0 s"):
        await read_all(H11Client("http://127.0.0.1:1", connect_timeout=2.0))


class socket_bound:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


async def test_as_many_connections_are_kept_alive_as_may_be_open() -> None:
    """A node running 32 requests at once kept only 16 connections alive (the old default):
    half its requests under that load opened a new TCP connection and closed it after."""
    async with trio.open_nursery() as nursery:
        server = await start(nursery, keep_alive())
        client = H11Client(f"http://127.0.0.1:{server.port}", max_connections=32)
        with trio.fail_after(30):
            for _ in range(2):
                responses = [await client.request("GET", "/") for _ in range(32)]
                for r in responses:
                    assert await r.aread(100) == b"hello"
                    await r.aclose()
                assert len(client._idle) == 32
        assert server.connections == 32  # the second round reused every one
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_connection_limit_and_keepalive_expiry() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, keep_alive())
        client = H11Client(f"http://127.0.0.1:{server.port}", max_connections=2, keepalive_s=5.0)
        with trio.fail_after(30):
            a = await client.request("GET", "/")
            b = await client.request("GET", "/")
            got = trio.Event()

            async def third() -> None:
                assert (await read_all(client, body=None))[0] == 200
                got.set()

            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked()
            assert client._slots.value == 0 and not got.is_set()  # it waits for a free connection
            assert await a.aread(100) == b"hello"
            await a.aclose()
            await got.wait()
            await b.aclose()  # not read to its end: closed, not pooled
            assert len(client._idle) == 1 and server.connections == 2
            client._idle[0].idle_since -= 6.0  # idle longer than keepalive_s
            assert await read_all(client, body=None) == (200, b"hello")
            assert server.connections == 3  # the expired one was not used
        await client.aclose()
        nursery.cancel_scope.cancel()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    plain = keep_alive(b"secret")

    async def tls_script(stream: trio.SocketStream, server: Server) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True, https_compatible=True)
        await plain(tls, server)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        server = await start(nursery, tls_script)
        trusting = ssl.create_default_context(cafile=str(cert))
        client = H11Client(f"https://127.0.0.1:{server.port}", ssl_context=trusting)
        with trio.fail_after(10):
            assert await read_all(client) == (200, b"secret")
            assert await read_all(client) == (200, b"secret")
            assert server.connections == 1
            with pytest.raises(HTTPUnreachable, match="cannot connect"):  # the system CAs do not know it
                await read_all(H11Client(f"https://127.0.0.1:{server.port}"))
        await client.aclose()
        nursery.cancel_scope.cancel()


def test_bad_base_urls() -> None:
    for url in ("ftp://x", "127.0.0.1:8000", "http://"):
        with pytest.raises(ValueError, match="base_url must be"):
            H11Client(url)


async def test_a_kept_alive_connection_closed_as_it_is_reused_is_retried_once() -> None:
    """The server's idle timer fires as we reuse its connection: it reads the request and
    closes without a byte of answer. The request never ran, so it goes once more on a new
    connection; a new connection that does the same is an error (never retried)."""
    answering = [True]

    async def first_only(stream: trio.SocketStream, server: Server) -> None:
        conn = h11.Connection(h11.SERVER)
        await server.read_request(stream, conn)
        if answering[0]:
            await stream.send_all(answer(b"ok"))
            conn = h11.Connection(h11.SERVER)
            await server.read_request(stream, conn)  # a reuse: hang up without answering
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        server = await start(nursery, first_only)
        client = H11Client(f"http://127.0.0.1:{server.port}")
        with trio.fail_after(10):
            assert await read_all(client) == (200, b"ok")
            assert await read_all(client) == (200, b"ok")  # reused, closed, retried on a new one
        assert server.connections == 2 and client._slots.value == 64
        answering[0] = False
        fresh = H11Client(f"http://127.0.0.1:{server.port}")
        with trio.fail_after(10), pytest.raises(HTTPUnreachable, match="without answering"):
            await read_all(fresh)
        assert server.connections == 3 and fresh._slots.value == 64
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_userinfo_in_the_base_url_is_basic_auth() -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, keep_alive())
        client = H11Client(f"http://user:p%40ss@127.0.0.1:{server.port}")
        with trio.fail_after(10):
            assert await read_all(client) == (200, b"hello")
        assert b"authorization: Basic dXNlcjpwQHNz" in server.first_reads[0].replace(b"Authorization", b"authorization")
        assert b"user:" not in server.first_reads[0].split(b"\r\n")[0]
        await client.aclose()
        nursery.cancel_scope.cancel()
