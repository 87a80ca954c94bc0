"""Stream caps (p2pserve/net/caps.py, net/guard.py): the pure accounting, then the attack of
issue 11 item 4 on the memory transport in virtual time: many streams each holding most of
a 4 MiB frame and stalling. Memory held stays under the caps, the hostile peer is cut off
(its streams closed, new ones refused, logged once) and honest requests still succeed."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2pserve.errors import ConnectionBroken, DialError, RemoteProtocolError, StreamClosed
from p2pserve.net.caps import DEFAULT_STREAM_CAPS, Admission, CapLedger, Charged, StreamCaps
from p2pserve.net.framed import RECEIVE_CHUNK, FramedStream
from p2pserve.testing.stream_helpers import until
from p2pserve.transport import Stream
from p2pserve.wire.framing import encode_uvarint
from p2pserve.wire.infer import INFER_PROTOCOL
from p2pserve.wire.limits import DEFAULT_LIMITS
from tests.serve_harness import ScriptedBackend, collect, connect_all, start_node, start_transport, text_of
from transports.memory import MemoryNetwork, MemoryTransport

MIB = 1 << 20
CAPS = StreamCaps(max_streams_per_peer=4, max_streams=6, max_buffered_per_peer=100, max_buffered=150, cutoff_s=10.0)


# --- the accounting (pure) ------------------------------------------------------------------


def test_charges_within_caps_are_released_to_zero() -> None:
    led = CapLedger(CAPS)
    assert led.open("a", 0.0) is Admission.OPEN
    assert led.charge("a", 60, 0.0) == Charged(True)
    assert led.charge("b", 60, 0.0) == Charged(True)  # a stream we opened: bytes without an inbound stream
    assert (led.buffered, led.streams, led.usage("a")) == (120, 1, (1, 60))
    led.release("a", 60, 0.0)
    led.release("b", 60, 0.0)
    led.close("a", 0.0)
    assert (led.buffered, led.streams, len(led), led.peak_buffered, led.cutoffs) == (0, 0, 0, 120, 0)


def test_a_peer_over_its_buffered_cap_is_cut_off_then_forgiven() -> None:
    led = CapLedger(CAPS)
    assert led.open("a", 0.0) is Admission.OPEN
    assert led.charge("a", 100, 0.0) == Charged(True)  # exactly at the cap
    assert led.charge("a", 1, 1.0) == Charged(False, ("a",))
    assert led.refusing("a", 1.0) and led.cutoffs == 1
    assert led.charge("a", 5, 1.5) == Charged(False)  # still cut: refused, not cut again
    assert led.open("a", 2.0) is Admission.CUT_OFF and led.refused == 1
    led.release("a", 106, 2.0)
    led.close("a", 2.0)
    assert led.refusing("a", 10.9)  # holds nothing, but the cut-off lasts cutoff_s
    assert led.open("a", 11.0) is Admission.OPEN
    led.close("a", 11.0)
    assert len(led) == 0


def test_node_buffered_cap_cuts_off_the_biggest_holder_not_the_charger() -> None:
    led = CapLedger(CAPS)
    assert led.charge("big", 90, 0.0).ok and led.charge("small", 50, 0.0).ok
    # small's 11 more bytes take the node to 151 > 150: big holds the most and goes
    assert led.charge("small", 11, 0.0) == Charged(True, ("big",))
    assert led.refusing("big", 0.0) and not led.refusing("small", 0.0)
    # big's bytes are being freed: they no longer count, so nobody else is cut off meanwhile
    assert led.charge("other", 80, 0.0) == Charged(True)
    assert led.buffered == 231
    # over again: the charger is now the biggest live holder and fails itself
    assert led.charge("other", 19, 0.0) == Charged(False, ("other",))
    led.release("big", 90, 0.0)
    assert led.buffered == 160 and led.refusing("big", 0.0)


def test_stream_caps_per_peer_cut_off_per_node_refuse() -> None:
    led = CapLedger(CAPS)
    for _ in range(4):
        assert led.open("a", 0.0) is Admission.OPEN
    assert led.open("a", 0.0) is Admission.PEER_STREAMS
    assert led.refusing("a", 0.0) and led.cutoffs == 1
    assert led.open("b", 0.0) is Admission.OPEN and led.open("b", 0.0) is Admission.OPEN
    assert led.open("c", 0.0) is Admission.NODE_STREAMS  # six open: refused, nobody cut off
    assert not led.refusing("c", 0.0) and not led.refusing("b", 0.0)
    for _ in range(4):
        led.close("a", 1.0)
    assert led.open("c", 1.0) is Admission.OPEN and led.open("a", 1.0) is Admission.CUT_OFF


def test_memory_is_bounded_and_forgets_the_earliest_cut_off_first() -> None:
    led = CapLedger(CAPS, max_remembered=2)
    led.open("a", 0.0)
    led.charge("a", 101, 0.0)  # cut until 10
    led.release("a", 101, 0.0)
    led.close("a", 0.0)
    led.open("b", 1.0)
    led.charge("b", 101, 1.0)  # cut until 11
    led.release("b", 101, 1.0)
    led.close("b", 1.0)
    assert led.open("c", 2.0) is Admission.OPEN  # room made: "a" forgotten (forgiven)
    assert not led.refusing("a", 2.0) and led.refusing("b", 2.0) and len(led) == 2


def test_misuse_and_bad_caps_raise() -> None:
    led = CapLedger(CAPS)
    with pytest.raises(ValueError, match="no open stream"):
        led.close("a", 0.0)
    with pytest.raises(ValueError, match="cannot release"):
        led.release("a", 1, 0.0)
    with pytest.raises(ValueError, match="positive"):
        led.charge("a", -1, 0.0)
    with pytest.raises(ValueError, match="at least 1"):
        StreamCaps(max_streams=0)
    with pytest.raises(ValueError, match="max_buffered must be at least"):
        StreamCaps(max_buffered_per_peer=10, max_buffered=5)
    with pytest.raises(ValueError, match="max_streams must be at least"):
        StreamCaps(max_streams_per_peer=10, max_streams=5)
    with pytest.raises(ValueError, match="cutoff_s"):
        StreamCaps(cutoff_s=0.0)
    with pytest.raises(ValueError, match="max_remembered"):
        CapLedger(CAPS, max_remembered=0)


def test_default_caps_hold_honest_use() -> None:
    """Sixteen largest frames in flight from one peer; four times yamux's 256 streams."""
    d = DEFAULT_STREAM_CAPS
    assert d.max_buffered_per_peer >= 16 * DEFAULT_LIMITS.max_frame
    assert d.max_streams_per_peer >= 4 * 256


# --- the attack on the memory transport ---------------------------------------------------------

PARTIAL = encode_uvarint(4 * MIB) + b"\0" * (4 * MIB - 1)
"""Most of a frame of the largest size: the executor's reader must hold it all."""


async def _stall(t: MemoryTransport, peer: str, protocol: str, data: bytes, opened: list[Stream]) -> None:
    try:
        s = await t.open_stream(peer, protocol)
        opened.append(s)
        await s.send_all(data)
        await trio.sleep_forever()
    except (ConnectionBroken, DialError, StreamClosed):
        return


async def test_many_stalled_partial_frames_are_capped_and_the_peer_cut_off(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve.net.guard")
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(seed=1)
        ex = await start_node(nursery, net, 1, {"m": ScriptedBackend()})
        gw = await start_node(nursery, net, 2, {})
        await connect_all(gw, [ex])
        hostile = await start_transport(nursery, net, 3)
        await hostile.connect(ex.transport.listen_addrs()[0])
        led = ex.transport.guard.ledger
        opened: list[Stream] = []
        async with trio.open_nursery() as attack:
            for _ in range(400):
                attack.start_soon(_stall, hostile, ex.signer.peer_id, INFER_PROTOCOL, PARTIAL, opened)
            await until(lambda: ex.transport.guard.refusing(hostile.peer_id) and led.usage(hostile.peer_id) == (0, 0), timeout=5.0)
            # while the hostile streams stall (or what is left of them), honest requests go through
            for _ in range(3):
                events, err = await collect(gw.serve)
                assert err is None and text_of(events) == "Hello world"
            attack.cancel_scope.cancel()
        assert led.peak_buffered <= DEFAULT_STREAM_CAPS.max_buffered_per_peer + RECEIVE_CHUNK  # not 400 x 4 MiB
        assert led.cutoffs == 1 and len(opened) == 400
        for hs in opened[:: 40]:  # every one of its streams was closed under it
            assert await hs.receive_some() == b""
            with pytest.raises(ConnectionBroken):
                await hs.send_all(b"more")
        # the hostile peer's new streams are refused, and this node does not open any to it
        s = await hostile.open_stream(ex.signer.peer_id, INFER_PROTOCOL)
        with pytest.raises(ConnectionBroken):
            await s.receive_some()
        with pytest.raises(DialError, match="cut off"):
            await ex.transport.open_stream(hostile.peer_id, INFER_PROTOCOL)
        cut_lines = [r for r in caplog.records if "cut off" in r.getMessage()]
        assert len(cut_lines) == 1 and hostile.peer_id in cut_lines[0].getMessage()
        # the cut-off ends; everything held was released
        await trio.sleep(DEFAULT_STREAM_CAPS.cutoff_s)
        assert not ex.transport.guard.refusing(hostile.peer_id) and led.buffered == 0
        nursery.cancel_scope.cancel()


async def test_many_identities_under_their_caps_meet_the_node_cap(autojump_clock: trio.testing.MockClock) -> None:
    """Eight identities each holding less than its own cap, together four times the node's:
    the biggest holders are cut off one by one; the live total stays under the node cap."""
    caps = StreamCaps(max_buffered_per_peer=8 * MIB, max_buffered=16 * MIB)
    partial = encode_uvarint(4 * MIB) + b"\0" * (3 * MIB)
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(seed=2, stream_caps=caps)
        ex = await start_node(nursery, net, 1, {"m": ScriptedBackend()})
        gw = await start_node(nursery, net, 2, {})
        await connect_all(gw, [ex])
        led = ex.transport.guard.ledger
        opened: list[Stream] = []
        async with trio.open_nursery() as attack:
            for i in range(8):
                h = await start_transport(attack, net, 10 + i)
                await h.connect(ex.transport.listen_addrs()[0])
                for _ in range(2):
                    attack.start_soon(_stall, h, ex.signer.peer_id, INFER_PROTOCOL, partial, opened)
            await until(lambda: len(opened) == 16, timeout=5.0)
            await trio.sleep(0.5)
            assert led.buffered <= caps.max_buffered and led.cutoffs >= 3
            events, err = await collect(gw.serve)
            assert err is None and text_of(events) == "Hello world"
            attack.cancel_scope.cancel()
        assert led.peak_buffered <= caps.max_buffered + caps.max_buffered_per_peer
        nursery.cancel_scope.cancel()


async def test_any_framed_protocol_is_capped_in_streams(autojump_clock: trio.testing.MockClock) -> None:
    """The caps are the transport's, so every protocol that reads frames has them (sync and
    judge included): a peer opening more streams than its cap has them all closed."""
    caps = StreamCaps(max_streams_per_peer=3, max_streams=8)
    proto = "/p2pserve/test/framed/1"
    handled: list[str] = []

    async def handler(stream: Stream) -> None:
        fs = FramedStream(stream)
        try:
            await fs.recv_or_eof()
        except RemoteProtocolError:
            pass
        handled.append(stream.remote_peer)

    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(seed=3, stream_caps=caps)
        server = await start_transport(nursery, net, 1)
        server.set_handler(proto, handler)
        hostile = await start_transport(nursery, net, 2)
        honest = await start_transport(nursery, net, 3)
        for t in (hostile, honest):
            await t.connect(server.listen_addrs()[0])
        streams = [await hostile.open_stream(server.peer_id, proto) for _ in range(4)]
        await trio.sleep(0.1)
        for s in streams:  # the three admitted were closed with the peer, the fourth refused
            with pytest.raises(ConnectionBroken):
                await s.receive_some()
        assert server.guard.ledger.streams == 0 and server.guard.refusing(hostile.peer_id)
        s = await honest.open_stream(server.peer_id, proto)
        await s.aclose()
        await until(lambda: honest.peer_id in handled, timeout=1.0)
        nursery.cancel_scope.cancel()
