"""Small helpers the shipped suites and the tests share (connecting, echoing, reading, polling
in virtual time)."""

from __future__ import annotations

from collections.abc import Callable

import trio

from p2pserve.transport import PubsubMessage, Stream, Subscription, Transport

__all__ = ["PROTO", "collect", "connect", "echo_handler", "read_all", "until", "wait_until"]

PROTO = "/p2pserve/test/echo/1"


async def connect(a: Transport, b: Transport) -> None:
    """Connect ``a`` to ``b`` and check the returned peer ID."""
    assert await a.connect(b.listen_addrs()[0]) == b.peer_id


async def wait_until(pred: Callable[[], bool], poll: float = 0.02) -> None:
    """Poll ``pred`` (callers bound this with fail_after)."""
    while not pred():
        await trio.sleep(poll)


async def until(pred: Callable[[], bool], timeout: float = 60.0, poll: float = 0.1) -> None:
    """Poll ``pred`` every ``poll`` seconds until it holds; TooSlowError after ``timeout``
    (virtual seconds under a MockClock)."""
    with trio.fail_after(timeout):
        await wait_until(pred, poll)


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
