"""Small helpers the shipped transport suites share (connecting, echoing, reading)."""

from __future__ import annotations

from collections.abc import Callable

import trio

from p2pserve.transport import PubsubMessage, Stream, Subscription, Transport

__all__ = ["PROTO", "collect", "connect", "echo_handler", "read_all", "wait_until"]

PROTO = "/p2pserve/test/echo/1"


async def connect(a: Transport, b: Transport) -> None:
    """Connect ``a`` to ``b`` and check the returned peer ID."""
    assert await a.connect(b.listen_addrs()[0]) == b.peer_id


async def wait_until(pred: Callable[[], bool], poll: float = 0.02) -> None:
    """Poll ``pred`` (callers bound this with fail_after)."""
    while not pred():
        await trio.sleep(poll)


async def collect(sub: Subscription, into: list[PubsubMessage]) -> None:
    async for msg in sub:
        into.append(msg)


async def read_all(stream: Stream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some(65536):
        out += data
    return bytes(out)


async def echo_handler(stream: Stream) -> None:
    """Echo every byte back; half-close when the opener half-closes."""
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()
    finally:
        await stream.aclose()
