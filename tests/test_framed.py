"""FramedStream: one wire message per length-prefixed frame over a transport Stream."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from p2pserve.errors import (
    ConnectionBroken,
    FrameTooLarge,
    LocalProtocolError,
    MalformedMessage,
    PeerTimeout,
    StreamClosed,
)
from p2pserve.net.framed import FramedStream
from p2pserve.transport import Stream
from p2pserve.wire.codec import encode
from p2pserve.wire.framing import encode_frame, encode_uvarint
from p2pserve.wire.infer import Accept, Failure, Reject
from tests.conftest import signer_for
from transports.memory import MemoryNetwork


class TrioStream:
    """A trio stream adapted to p2pserve.transport.Stream (errors translated like a transport)."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, remote_peer: str) -> None:
        self._stream = stream
        self.remote_peer = remote_peer

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except trio.ClosedResourceError as exc:
            raise StreamClosed("closed") from exc
        except trio.BrokenResourceError as exc:
            raise ConnectionBroken("broken") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self._stream.receive_some(max_bytes)
        except trio.ClosedResourceError as exc:
            raise StreamClosed("closed") from exc
        except trio.BrokenResourceError as exc:
            raise ConnectionBroken("broken") from exc

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def pair(max_frame: int = 1 << 20) -> tuple[FramedStream, TrioStream]:
    """A framed end and the raw other end (to inject arbitrary bytes)."""
    left, right = trio.testing.memory_stream_pair()
    a, b = TrioStream(left, "B"), TrioStream(right, "A")
    assert isinstance(a, Stream)
    return FramedStream(a, max_frame=max_frame), b


FAIL = Failure(code="busy", message="try later", receipt=None)


async def test_round_trip_several_messages_in_one_chunk() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = FramedStream(TrioStream(left, "B")), FramedStream(TrioStream(right, "A"))
    assert a.remote_peer == "B"
    await a.send(FAIL)
    await a.send(Failure(code="x", message="y" * 1000, receipt=None))
    assert await b.recv(Failure) == FAIL
    got = await b.recv((Failure, Reject))
    assert isinstance(got, Failure) and got.message == "y" * 1000
    await a.send_eof()
    assert await b.recv_or_eof() is None
    await a.aclose()
    await a.aclose()  # idempotent


async def test_byte_by_byte_delivery() -> None:
    f, raw = pair()
    frame = encode_frame(encode(FAIL))
    async with trio.open_nursery() as nursery:

        async def trickle() -> None:
            for i in range(len(frame)):
                await raw.send_all(frame[i : i + 1])
                await trio.lowlevel.checkpoint()

        nursery.start_soon(trickle)
        assert await f.recv(Failure) == FAIL


async def test_eof_where_a_message_is_expected_is_broken() -> None:
    f, raw = pair()
    await raw.send_eof()
    with pytest.raises(ConnectionBroken, match="ended while a message was expected"):
        await f.recv()


async def test_truncated_frame_is_broken_even_for_recv_or_eof() -> None:
    f, raw = pair()
    frame = encode_frame(encode(FAIL))
    await raw.send_all(frame[:-3])
    await raw.send_eof()
    with pytest.raises(ConnectionBroken, match="inside a frame"):
        await f.recv_or_eof()


async def test_oversized_frame_is_refused_before_buffering_and_poisons() -> None:
    f, raw = pair(max_frame=100)
    await raw.send_all(encode_uvarint(101))  # only the length prefix: no payload needed
    with pytest.raises(FrameTooLarge):
        await f.recv()
    with pytest.raises(FrameTooLarge):
        await f.recv()


async def test_garbage_bytes_are_malformed() -> None:
    f, raw = pair()
    await raw.send_all(encode_frame(b"\xc1\xff\x00garbage"))
    with pytest.raises(MalformedMessage):
        await f.recv()
    with pytest.raises(MalformedMessage):  # poisoned: the caller must close
        await f.recv()


async def test_bad_varint_is_malformed() -> None:
    f, raw = pair()
    await raw.send_all(b"\xff" * 11)
    with pytest.raises(MalformedMessage):
        await f.recv()


async def test_unexpected_message_class_is_malformed() -> None:
    f, raw = pair()
    await raw.send_all(encode_frame(encode(FAIL)))
    with pytest.raises(MalformedMessage, match="expected Accept"):
        await f.recv(Accept)


async def test_timeout_raises_peer_timeout(autojump_clock: trio.testing.MockClock) -> None:
    f, raw = pair()
    t0 = trio.current_time()
    with pytest.raises(PeerTimeout):
        await f.recv(timeout=5.0)
    assert trio.current_time() - t0 == pytest.approx(5.0)
    # a message that arrives in time is returned
    async with trio.open_nursery() as nursery:

        async def late() -> None:
            await trio.sleep(2)
            await raw.send_all(encode_frame(encode(FAIL)))

        nursery.start_soon(late)
        assert await f.recv(Failure, timeout=5.0) == FAIL


async def test_send_timeout(autojump_clock: trio.testing.MockClock) -> None:
    left, right = trio.testing.lockstep_stream_pair()  # send_all blocks until the peer reads
    f = FramedStream(TrioStream(left, "B"))
    with pytest.raises(PeerTimeout):
        await f.send(FAIL, timeout=1.0)


async def test_oversized_send_is_a_local_error_and_writes_nothing() -> None:
    f, raw = pair(max_frame=16)
    with pytest.raises(LocalProtocolError):
        await f.send(Failure(code="x", message="y" * 100, receipt=None))
    await f.send_eof()
    assert await raw.receive_some() == b""


async def test_over_memory_transport_with_latency(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork(default_latency=0.05)
    async with (
        network.open_transport(signer_for("a")) as a,
        network.open_transport(signer_for("b")) as b,
    ):

        async def server(stream: Stream) -> None:
            f = FramedStream(stream)
            while (msg := await f.recv_or_eof(Failure)) is not None:
                await f.send(Reject(request_id=bytes(16), reason=msg.code))

        b.set_handler("/framed/1", server)
        await a.connect(b.listen_addrs()[0])
        f = FramedStream(await a.open_stream(b.peer_id, "/framed/1"))
        t0 = trio.current_time()
        for i in range(3):
            await f.send(Failure(code=f"c{i}", message="", receipt=None))
            assert await f.recv(Reject, timeout=1.0) == Reject(request_id=bytes(16), reason=f"c{i}")
        assert trio.current_time() - t0 == pytest.approx(0.3)
        await f.send_eof()
        with pytest.raises(ConnectionBroken):
            await f.recv(Reject)
        await f.aclose()
        with pytest.raises(StreamClosed):
            await f.send(FAIL)
        a.kill()
        b.kill()
