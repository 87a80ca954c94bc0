"""The executor's checks on offers: replay, tampering, staleness, wrong executor/network, price."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pserve.backends.base import TextDelta
from p2pserve.net.framed import FramedStream
from p2pserve.serving.receipts import ReplayGuard
from p2pserve.serving.replay_log import REPLAY_NAME, ReplayLog
from p2pserve.testing.scripted import Step
from p2pserve.wire.infer import INFER_PROTOCOL, Accept, Chunk, Done, Failure, InferRequest, Reject
from tests.serve_harness import NETWORK, Fail, ScriptedBackend, Sleep, signer, start_node, start_transport, wall_clock
from transports.memory import MemoryNetwork


def offer(executor: str, **changes: object) -> InferRequest:
    req = InferRequest(
        request_id=bytes(16), network_id=NETWORK, requester=signer(1).peer_id, executor=executor, model="m",
        kind="chat", body=b'{"messages":[]}', created_ms=int(wall_clock() * 1000), continuation="",
        max_price_per_1k=1000, signature=b"",
    )
    signed = dataclasses.replace(req, **changes).signed(signer(1))  # type: ignore[arg-type]
    return signed


async def read_answer(t: object, peer: str, req: InferRequest) -> list[object]:
    """Every message the executor sends for ``req``, up to its Done or Failure."""
    fs = FramedStream(await t.open_stream(peer, INFER_PROTOCOL))  # type: ignore[attr-defined]
    try:
        await fs.send(req)
        got = [await fs.recv(timeout=5)]
        while not isinstance(got[-1], Done | Failure | Reject):
            got.append(await fs.recv(timeout=5))
        return got
    finally:
        await fs.aclose()


async def send_offer(t: object, peer: str, req: InferRequest) -> object:
    """The executor's last message for ``req`` (Reject, Done or Failure)."""
    return (await read_answer(t, peer, req))[-1]


async def test_offer_checks(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        requester = await start_transport(nursery, net, 1)
        ex = await start_node(nursery, net, 2, {"m": ScriptedBackend()}, prices={"m": 500})
        await requester.connect(ex.transport.listen_addrs()[0])
        me = ex.signer.peer_id
        good = offer(me)
        assert isinstance(await send_offer(requester, me, good), Done)
        reply = await send_offer(requester, me, good)
        assert reply == Reject(good.request_id, "replay")
        tampered = dataclasses.replace(offer(me, request_id=b"\x01" * 16), body=b'{"messages":[1]}')
        assert await send_offer(requester, me, tampered) == Reject(tampered.request_id, "bad-signature")
        cases = {
            "stale": offer(me, request_id=b"\x02" * 16, created_ms=int(wall_clock() * 1000) - 600_000),
            "wrong-executor": offer(signer(9).peer_id, request_id=b"\x03" * 16),
            "wrong-network": offer(me, request_id=b"\x04" * 16, network_id="other"),
            "unknown-model": offer(me, request_id=b"\x05" * 16, model="nope"),
            "price": offer(me, request_id=b"\x06" * 16, max_price_per_1k=499),
            "no-continuation": offer(me, request_id=b"\x07" * 16, continuation="abc"),
            "bad-body": offer(me, request_id=b"\x08" * 16, body=b"[1, 2]"),
        }
        # a peer's body too deep for json.loads, or not text (a lone surrogate): refused, never a crash
        hostile = [b"[" * 100_000, b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                   b'{"messages": [' * 70 + b"]" * 70 + b"}"]
        for i, body in enumerate(hostile):
            req = offer(me, request_id=bytes([0x10 + i]) * 16, body=body)
            assert await send_offer(requester, me, req) == Reject(req.request_id, "bad-body"), body[:40]
        assert isinstance(await send_offer(requester, me, offer(me, request_id=b"\x20" * 16)), Done)  # still serving
        for reason, req in cases.items():
            assert await send_offer(requester, me, req) == Reject(req.request_id, reason), reason
        assert ex.serve.counters.offers_rejected == 1 + 1 + len(cases) + 3
        assert ex.serve.counters.served_for_peers == 2
        nursery.cancel_scope.cancel()


async def test_a_replay_is_refused_across_an_executor_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Issue 7, item 10: the replay guard did not survive an executor restart, so an offer
    replayed within the window right after a restart was executed again (free work for
    whoever replays it). Offers taken are now in <data-dir>/replay.log."""
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        requester = await start_transport(nursery, net, 1)
        good = offer(signer(2).peer_id)
        for run in range(2):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    ex = await start_node(inner, net, 2, {"m": ScriptedBackend()},
                                          replay_log=ReplayLog(tmp_path / REPLAY_NAME))
                    await requester.connect(ex.transport.listen_addrs()[0])  # the restarted one: a new address
                    reply = await send_offer(requester, ex.signer.peer_id, good)
                    if run == 0:
                        assert isinstance(reply, Done)
                    else:
                        assert reply == Reject(good.request_id, "replay")
                        assert ex.serve.counters.served_for_peers == 0
                    scope.cancel()
        nursery.cancel_scope.cancel()


def test_replay_log_keeps_only_the_window_and_survives_a_torn_tail(tmp_path: Path) -> None:
    log = ReplayLog(tmp_path / REPLAY_NAME)
    assert log.open(10_000, 1_000) == []
    log.append("a", b"1" * 16, 9_500)
    log.append("b", b"2" * 16, 5_000)
    log.append("c", b"3" * 16, 10_000)
    log.close()
    path = tmp_path / REPLAY_NAME
    path.write_bytes(path.read_bytes()[:-3])  # killed inside the last write
    again = ReplayLog(path)
    assert again.open(10_100, 1_000) == [("a", b"1" * 16, 9_500)]  # b left the window, c was torn
    again.close()


def test_replay_guard_window_and_bound() -> None:
    g = ReplayGuard(window_ms=1000, max_entries=2)
    assert g.check("a", b"1", 5000, 5000) is None
    assert g.check("a", b"1", 5000, 5100) == "replay"
    assert g.check("b", b"1", 5000, 5100) is None  # per requester
    assert g.check("c", b"1", 5000, 5100) == "busy"  # bounded, never forgets early
    assert g.check("c", b"1", 3000, 5100) == "stale"
    assert g.check("c", b"1", 7000, 5100) == "stale"  # from the future too
    assert g.check("c", b"2", 6500, 6500) is None  # the old entries left the window
    assert len(g) == 1
    assert g.check("a", b"1", 5000, 6500) == "stale"


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 1001])
def test_price_rounds_up(n: int) -> None:
    from p2pserve.serving.receipts import price_for

    assert price_for(n, 1000) == n
    assert price_for(n, 1) == (n + 999) // 1000


async def answer_to(script: tuple[Step, ...]) -> list[object]:
    """What an executor playing ``script`` sends for one offer (Accept to Done or Failure)."""
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        exe = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=script)}, prices={"m": 1000})
        t = await start_transport(nursery, net, 1)
        await t.connect(exe.transport.listen_addrs()[0])
        got = await read_answer(t, exe.signer.peer_id, offer(exe.signer.peer_id))
        nursery.cancel_scope.cancel()
    return got


async def test_the_tokens_of_one_backend_read_travel_in_one_chunk(autojump_clock: trio.testing.MockClock) -> None:
    """One Chunk per backend read (deltas saying ``more``, then the read's last): one frame
    to encode, send and check instead of one per token; the receipt still counts tokens."""
    got = await answer_to((TextDelta("a", more=True), TextDelta("b", more=True), "c", Sleep(1), "d",
                           TextDelta("e", more=True), "f"))
    assert isinstance(got[0], Accept) and isinstance(got[-1], Done)
    assert got[1:-1] == [Chunk(0, "abc"), Chunk(1, "d"), Chunk(2, "ef")]
    assert got[-1].receipt.completion_tokens == 6  # from the backend's count, one per delta


async def test_a_failure_after_held_tokens_sends_them_and_counts_each(autojump_clock: trio.testing.MockClock) -> None:
    got = await answer_to(("a", TextDelta("b", more=True), TextDelta("c", more=True), Fail("GPU fell off")))
    assert got[1:-1] == [Chunk(0, "a"), Chunk(1, "bc")]
    failure = got[-1]
    assert isinstance(failure, Failure) and failure.receipt is not None and failure.receipt.partial
    assert failure.receipt.completion_tokens == 3  # a, b, c: every token that went out
