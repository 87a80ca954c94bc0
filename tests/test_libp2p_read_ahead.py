"""The read-ahead workaround for py-libp2p's TCP connections (transports.libp2p._setup):
reads of any sizes return the same bytes in the same order as exact reads did, never more
than asked, with one underlying read per burst."""

from __future__ import annotations

import random

from transports.libp2p._setup import READ_AHEAD, _read_ahead


class _Conn:
    def __init__(self, data: bytes, segment: int) -> None:
        self.data, self.segment, self.reads = data, segment, 0

    async def read(self, n: int | None = None) -> bytes:
        """Like TrioTCPStream.read: at most n bytes (one segment at most), b'' at EOF."""
        self.reads += 1
        size = self.segment if n is None else min(n, self.segment)
        out, self.data = self.data[:size], self.data[size:]
        return out


async def test_reads_return_the_same_bytes_never_more_than_asked() -> None:
    rng = random.Random(7)
    data = bytes(rng.randrange(256) for _ in range(300_000))
    for segment in (1, 100, 70_000, 10**6):
        conn = _Conn(data, segment)
        read = _read_ahead(_Conn.read)
        got = bytearray()
        while True:
            n = rng.choice([None, 1, 2, 12, 500, 70_000])
            piece = await read(conn, n)
            assert n is None or len(piece) <= n
            if not piece and n != 0:
                break
            got += piece
        assert bytes(got) == data


async def test_a_burst_of_small_frames_is_one_underlying_read() -> None:
    bodies = (b"a" * 40, b"b" * 300, b"c" * 7)
    conn = _Conn(b"".join(len(body).to_bytes(2, "big") + body for body in bodies), READ_AHEAD)
    read = _read_ahead(_Conn.read)
    for body in bodies:  # a length prefix, then the body: how Noise reads its messages
        size = int.from_bytes(await read(conn, 2), "big")
        assert await read(conn, size) == body
    assert conn.reads == 1
    assert await read(conn, 2) == b"" and conn.reads == 2  # then EOF, from the connection
