"""The transport conformance suite: every :class:`p2pserve.transport.Transport` passes it.

How to plug in a transport
==========================

Subclass :class:`TransportConformance` in a test module (the class name must start with
``Test``) and provide ONE fixture, ``open_transport``: a plain callable ``index -> async
context manager yielding a started Transport``. The suite runs each context in a nursery
owned by a fixture (see :class:`TransportPool`), so transports are entered and exited in
the right task, and "peer vanishes" means leaving that context::

    from p2pserve.testing.transport_suite import TransportConformance

    @pytest.mark.libp2p                      # marks every inherited test
    class TestLibp2pConformance(TransportConformance):
        timeout = 30.0                       # generous real-clock bounds (optional)

        @pytest.fixture
        def open_transport(self):
            return lambda i: open_libp2p_transport(Signer(bytes([i + 1]) * 32), ...)

Optional overrides:

* ``kill_transport`` fixture returning a :data:`KillFn`, ``async (transport) -> None``, that
  makes the peer vanish. The default (``transport_pool.close``) leaves its context: a clean
  shutdown, which its peers must also see as a vanished peer. The memory transport's file
  runs the suite twice, with that default and with the abrupt ``MemoryTransport.kill``.
* ``transport_clock`` fixture: a ``trio.abc.Clock`` to run every test under, or None (the
  default: trio's real clock). The memory transport returns ``autojump_clock``; libp2p must
  not (it reads the wall clock). Every suite test takes it as a direct argument because
  pytest-trio only uses a clock that is a test's own argument.
* ``make_transports`` fixture (rarely needed): ``async (n) -> list[Transport]`` returning
  ``n`` more started, unconnected transports; replaces the pool (then override
  ``kill_transport`` too, since the default one closes through the pool).
* class attributes ``timeout`` (bound on each step, seconds), ``settle`` (how long to wait
  before asserting that something did NOT happen), ``retry_interval`` (re-publish period
  while a pubsub mesh forms), ``large_payload`` (bytes for the large transfer test),
  ``trio_stream_gaps`` (see below).

Trio stream semantics
=====================

The contract promises trio stream semantics, so the suite runs
``trio.testing.check_half_closeable_stream`` (a superset of ``check_two_way_stream`` and
of ``check_one_way_stream`` in both directions) on pairs of (opener's end, handler's end)
streams, through :class:`TrioStreamAdapter`, which translates p2pserve errors to trio's.
It passes ``None`` for the "clogged stream" maker: the contract has no
``wait_send_all_might_not_block``, so trio's checks of it do not apply. A transport that
lacks one of the properties in :data:`TRIO_STREAM_GAPS` declares it in
``trio_stream_gaps``: the adapter papers over exactly that property so the rest of trio's
checks still run, and ``test_declared_trio_stream_gaps_are_real`` checks that each
declared gap is still there (so a fixed gap must be taken out of the list).

Every test bounds itself with ``trio.fail_after``; under ``MockClock(autojump_threshold=0)``
those bounds cost nothing, under a real clock nothing waits longer than needed except the
``settle`` period of negative checks. Transports come up unconnected: the suite connects them
with ``connect(listen_addrs()[0])`` as each test needs. Pubsub tests re-publish until a
message arrives (gossipsub meshes take a heartbeat to form), so they assert "eventually
delivered" and "never delivered within ``settle`` after a later message arrived".
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

from p2pserve.crypto import Signer
from p2pserve.errors import ConnectionBroken, DialError, P2PServeError, StreamClosed
from p2pserve.net.framed import FramedStream
from p2pserve.testing.pubsub_checks import PubsubChecks
from p2pserve.testing.stream_helpers import PROTO, connect, echo_handler, read_all, wait_until
from p2pserve.testing.trio_streams import TRIO_STREAM_GAPS, TrioStreamAdapter, TrioStreamChecks
from p2pserve.transport import PeerEvent, Stream, Transport
from p2pserve.wire.infer import Failure

__all__ = ["TRIO_STREAM_GAPS", "KillFn", "OpenTransport", "TransportConformance", "TransportPool", "TrioStreamAdapter"]

OpenTransport = Callable[[int], AbstractAsyncContextManager[Transport]]
KillFn = Callable[[Transport], Awaitable[None]]
StreamPairMaker = Callable[[], Awaitable[tuple["TrioStreamAdapter", "TrioStreamAdapter"]]]



class TransportPool:
    """Runs transport contexts as tasks of one nursery; ``close`` leaves one context."""

    def __init__(self, nursery: trio.Nursery, opener: OpenTransport) -> None:
        self._nursery = nursery
        self._opener = opener
        self._scopes: dict[int, tuple[trio.CancelScope, trio.Event]] = {}
        self._count = 0

    async def _run(self, index: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with self._opener(index) as t:
                    self._scopes[id(t)] = (scope, done)
                    task_status.started(t)
                    await trio.sleep_forever()
        finally:
            done.set()

    async def make(self, n: int) -> list[Transport]:
        """``n`` more started, unconnected transports."""
        out: list[Transport] = []
        for _ in range(n):
            t = await self._nursery.start(self._run, self._count)
            self._count += 1
            out.append(t)
        return out

    async def close(self, t: Transport) -> None:
        """Leave ``t``'s context and wait until it has exited."""
        scope, done = self._scopes[id(t)]
        scope.cancel()
        await done.wait()


class TransportConformance(TrioStreamChecks, PubsubChecks):
    """Behaviour every transport must have. See the module docstring for how to plug in."""

    timeout: float = 10.0
    settle: float = 0.5
    retry_interval: float = 0.25
    large_payload: int = 8 * 1024 * 1024
    trio_stream_gaps: frozenset[str] = frozenset()

    # -- fixtures (override ``open_transport``; optionally ``kill_transport``) -------------

    @pytest.fixture
    def transport_clock(self) -> trio.abc.Clock | None:
        return None

    @pytest.fixture
    def open_transport(self) -> OpenTransport:
        raise NotImplementedError("a TransportConformance subclass must provide open_transport")

    @pytest.fixture
    async def transport_pool(self, open_transport: OpenTransport) -> AsyncIterator[TransportPool]:
        async with trio.open_nursery() as nursery:
            yield TransportPool(nursery, open_transport)
            nursery.cancel_scope.cancel()

    @pytest.fixture
    def make_transports(self, transport_pool: TransportPool) -> Callable[[int], Awaitable[list[Transport]]]:
        return transport_pool.make

    @pytest.fixture
    def kill_transport(self, transport_pool: TransportPool) -> KillFn:
        async def kill(t: Transport) -> None:
            await transport_pool.close(t)

        return kill

    # -- identity and connections -------------------------------------------------------------

    async def test_listen_addrs_end_with_peer_id(self, transport_clock: Any, make_transports: Any) -> None:
        (a,) = await make_transports(1)
        assert isinstance(a, Transport)
        addrs = a.listen_addrs()
        assert addrs
        assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in addrs)

    async def test_connect_is_idempotent_and_symmetric(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        with trio.fail_after(self.timeout):
            await connect(a, b)
            await connect(a, b)
            assert b.peer_id in a.connected_peers()
            await wait_until(lambda: a.peer_id in b.connected_peers())

    async def test_connect_with_wrong_peer_id_fails(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        stranger = Signer(hashlib.sha256(b"stranger").digest()).peer_id
        addr = b.listen_addrs()[0].rsplit("/p2p/", 1)[0] + f"/p2p/{stranger}"
        with trio.fail_after(self.timeout), pytest.raises(DialError):
            await a.connect(addr)

    async def test_connect_without_peer_id_fails(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        addr = b.listen_addrs()[0].rsplit("/p2p/", 1)[0]
        with trio.fail_after(self.timeout), pytest.raises(DialError):
            await a.connect(addr)

    async def test_peer_events_connect_and_disconnect(self, transport_clock: Any, make_transports: Any, kill_transport: Any) -> None:
        a, b = await make_transports(2)
        events: list[PeerEvent] = []

        stream_of_events = b.peer_events()

        async def watch() -> None:
            async for ev in stream_of_events:
                events.append(ev)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(0.01)
            with trio.fail_after(self.timeout):
                await connect(a, b)
                await wait_until(lambda: PeerEvent(a.peer_id, True) in events)
                await kill_transport(a)
                await wait_until(lambda: PeerEvent(a.peer_id, False) in events)
                await wait_until(lambda: a.peer_id not in b.connected_peers())
            nursery.cancel_scope.cancel()
        assert events.index(PeerEvent(a.peer_id, True)) < events.index(PeerEvent(a.peer_id, False))

    # -- streams ------------------------------------------------------------------------------

    async def test_stream_both_directions(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        got: list[bytes] = []

        async def handler(stream: Stream) -> None:
            assert stream.remote_peer == a.peer_id
            data = await stream.receive_some()
            got.append(data)
            await stream.send_all(b"pong:" + data)
            assert await stream.receive_some() == b""
            await stream.send_all(b"bye")
            await stream.aclose()

        b.set_handler(PROTO, handler)
        with trio.fail_after(self.timeout):
            await connect(a, b)
            s = await a.open_stream(b.peer_id, PROTO)
            assert s.remote_peer == b.peer_id
            await s.send_all(b"ping")
            reply = b""
            while len(reply) < len(b"pong:ping"):
                reply += await s.receive_some()
            assert reply == b"pong:ping"
            await s.send_eof()
            assert await read_all(s) == b"bye"
            await s.aclose()
        assert got == [b"ping"]

    async def test_large_payload_both_ways(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        b.set_handler(PROTO, echo_handler)
        payload = bytes(range(256)) * (self.large_payload // 256)
        echoed: list[bytes] = []
        with trio.fail_after(self.timeout * 6):
            await connect(a, b)
            s = await a.open_stream(b.peer_id, PROTO)

            async def reader() -> None:
                echoed.append(await read_all(s))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                view = memoryview(payload)
                for i in range(0, len(payload), 1 << 20):
                    await s.send_all(bytes(view[i : i + (1 << 20)]))
                await s.send_eof()
            await s.aclose()
        assert len(echoed[0]) == len(payload)
        assert hashlib.sha256(echoed[0]).digest() == hashlib.sha256(payload).digest()

    async def test_concurrent_streams(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        b.set_handler(PROTO, echo_handler)
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            s = await a.open_stream(b.peer_id, PROTO)
            body = f"stream {i} ".encode() * (i + 1) * 100
            await s.send_all(body)
            await s.send_eof()
            results[i] = await read_all(s)
            assert results[i] == body
            await s.aclose()

        with trio.fail_after(self.timeout * 3):
            await connect(a, b)
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, i)
        assert sorted(results) == list(range(50))

    async def test_handler_exception_does_not_kill_transport(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)

        async def bad(stream: Stream) -> None:
            await stream.receive_some()
            raise RuntimeError("handler bug (expected in this test)")

        b.set_handler("/p2pserve/test/bad/1", bad)
        b.set_handler(PROTO, echo_handler)
        with trio.fail_after(self.timeout):
            await connect(a, b)
            # raw: the remote sees a reset (ConnectionBroken) or, where it cannot tell, an EOF
            s = await a.open_stream(b.peer_id, "/p2pserve/test/bad/1")
            await s.send_all(b"boom")
            try:
                assert await read_all(s) == b""
            except ConnectionBroken:
                pass
            await s.aclose()
            # framed: the same situation is always ConnectionBroken
            f = FramedStream(await a.open_stream(b.peer_id, "/p2pserve/test/bad/1"))
            await f.send(Failure(code="x", message="boom", receipt=None))
            with pytest.raises(ConnectionBroken):
                await f.recv(Failure)
            await f.aclose()
            # the transport lives on
            s = await a.open_stream(b.peer_id, PROTO)
            await s.send_all(b"still here")
            await s.send_eof()
            assert await read_all(s) == b"still here"
            await s.aclose()

    async def _vanishing_stream(self, make_transports: Any, kill_transport: Any) -> tuple[Transport, Stream]:
        a, b = await make_transports(2)
        started = trio.Event()

        async def hold(stream: Stream) -> None:
            started.set()
            await trio.sleep_forever()

        b.set_handler(PROTO, hold)
        await connect(a, b)
        s = await a.open_stream(b.peer_id, PROTO)
        await s.send_all(b"hello")
        await started.wait()
        await kill_transport(b)
        return a, s

    async def test_peer_vanishes_mid_stream_raw(self, transport_clock: Any, make_transports: Any, kill_transport: Any) -> None:
        with trio.fail_after(self.timeout):
            a, s = await self._vanishing_stream(make_transports, kill_transport)
            try:
                data = await s.receive_some()
                assert data == b""
            except ConnectionBroken:
                pass
            await s.aclose()
            await s.aclose()

    async def test_peer_vanishes_mid_stream_framed(self, transport_clock: Any, make_transports: Any, kill_transport: Any) -> None:
        with trio.fail_after(self.timeout):
            a, s = await self._vanishing_stream(make_transports, kill_transport)
            f = FramedStream(s)
            with pytest.raises(ConnectionBroken):
                await f.recv()
            await f.aclose()

    async def test_send_to_vanished_peer_eventually_breaks(self, transport_clock: Any, make_transports: Any, kill_transport: Any) -> None:
        with trio.fail_after(self.timeout):
            a, s = await self._vanishing_stream(make_transports, kill_transport)
            with pytest.raises(ConnectionBroken):
                while True:
                    await s.send_all(b"x" * 1024)
                    await trio.sleep(0.01)
            await s.aclose()

    async def test_open_stream_to_unknown_peer_fails(self, transport_clock: Any, make_transports: Any) -> None:
        (a,) = await make_transports(1)
        stranger = Signer(hashlib.sha256(b"nobody").digest()).peer_id
        with trio.fail_after(self.timeout), pytest.raises(DialError):
            await a.open_stream(stranger, PROTO)

    async def test_open_stream_to_vanished_peer_fails(self, transport_clock: Any, make_transports: Any, kill_transport: Any) -> None:
        a, b = await make_transports(2)
        b.set_handler(PROTO, echo_handler)
        with trio.fail_after(self.timeout):
            await connect(a, b)
            await kill_transport(b)
            await wait_until(lambda: b.peer_id not in a.connected_peers())
            with pytest.raises(DialError):
                await a.open_stream(b.peer_id, PROTO)

    async def test_use_after_aclose_raises_stream_closed(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        b.set_handler(PROTO, echo_handler)
        with trio.fail_after(self.timeout):
            await connect(a, b)
            s = await a.open_stream(b.peer_id, PROTO)
            await s.aclose()
            await s.aclose()  # idempotent
            with pytest.raises(StreamClosed):
                await s.send_all(b"late")
            with pytest.raises(StreamClosed):
                await s.receive_some()

    async def test_only_p2pserve_errors_escape(self, transport_clock: Any, make_transports: Any) -> None:
        a, b = await make_transports(2)
        b.set_handler(PROTO, echo_handler)
        with trio.fail_after(self.timeout):
            await connect(a, b)
            s = await a.open_stream(b.peer_id, PROTO)
            await s.send_eof()
            assert await read_all(s) == b""
            try:
                await s.send_all(b"after eof")
            except P2PServeError:
                pass
            await s.aclose()
