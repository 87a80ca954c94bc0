"""Wire format: round trips, canonical bytes, signatures, and garbage that must fail cleanly."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserve.crypto import Signer
from p2pserve.errors import BadSignature, FrameTooLarge, LocalProtocolError, MalformedMessage, RemoteProtocolError
from p2pserve.wire import (
    Accept,
    Chunk,
    Done,
    Failure,
    FrameDecoder,
    InferRequest,
    ModelStatus,
    Receipt,
    Reject,
    Status,
    decode,
    encode,
    encode_frame,
    encode_uvarint,
)
from p2pserve.wire.framing import decode_uvarint

SIGNER = Signer(bytes(range(32)))
OTHER = Signer(bytes(range(1, 33)))

text = st.text(max_size=40)
small = st.integers(min_value=0, max_value=2**62)
digest = st.binary(min_size=32, max_size=32)


@st.composite
def model_statuses(draw: st.DrawFn) -> ModelStatus:
    return ModelStatus(
        draw(text), draw(small), draw(small), draw(small), draw(small),
        draw(st.none() | st.floats(min_value=0, max_value=1)), draw(st.booleans()),
    )


@st.composite
def statuses(draw: st.DrawFn) -> Status:
    s = Status(
        draw(st.text(max_size=20)), SIGNER.peer_id, draw(small), draw(small),
        tuple(draw(st.lists(text, max_size=4))), tuple(draw(st.lists(model_statuses(), max_size=3))),
        draw(st.booleans()), draw(small), draw(small), draw(small), draw(st.binary(max_size=32)),
        draw(st.integers(1, 120_000)), draw(st.booleans()), draw(st.binary(max_size=32)), b"",
    )
    return s.signed(SIGNER)


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    return Receipt(
        draw(st.binary(min_size=16, max_size=16)), "devnet", OTHER.peer_id, SIGNER.peer_id, draw(text),
        draw(digest), draw(digest), draw(small), draw(small), draw(small), draw(st.booleans()), draw(small), b"",
    ).signed(SIGNER)


@st.composite
def requests(draw: st.DrawFn) -> InferRequest:
    return InferRequest(
        draw(st.binary(min_size=16, max_size=16)), "devnet", SIGNER.peer_id, OTHER.peer_id, draw(text),
        draw(st.sampled_from(["chat", "completion"])), draw(st.binary(max_size=200)), draw(small), draw(text), draw(small), b"",
    ).signed(SIGNER)


any_message = st.one_of(
    statuses(), model_statuses(), requests(), receipts(),
    st.builds(Accept, st.binary(max_size=16)),
    st.builds(Reject, st.binary(max_size=16), text),
    st.builds(Chunk, small, text),
    st.builds(Done, text, receipts()),
    st.builds(Failure, text, text, st.none() | receipts()),
)


@given(any_message)
def test_round_trip_is_identity_and_canonical(msg: object) -> None:
    data = encode(msg)  # type: ignore[arg-type]
    back = decode(data)
    assert back == msg
    assert encode(back) == data


@given(st.one_of(statuses(), requests(), receipts()))
def test_signed_messages_verify_and_any_flipped_byte_breaks_them(msg: object) -> None:
    msg.verify()  # type: ignore[attr-defined]
    data = bytearray(encode(msg))  # type: ignore[arg-type]
    # flip every byte position in turn: the result must fail to decode or fail to verify
    for i in range(len(data)):
        data[i] ^= 0x01
        try:
            other = decode(bytes(data))
            other.verify()  # type: ignore[attr-defined]
        except RemoteProtocolError:
            pass
        else:
            assert other == msg, f"byte {i} flipped yet the message still verifies"
        data[i] ^= 0x01


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_garbage_raises_only_malformed(data: bytes) -> None:
    try:
        decode(data)
    except MalformedMessage:
        pass


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
                    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=20))
@settings(max_examples=500)
def test_random_msgpack_structures_raise_only_malformed(obj: object) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    try:
        decode(data)
    except MalformedMessage:
        pass


@given(st.integers(min_value=1, max_value=60), st.lists(st.integers(0, 2**31), max_size=12))
def test_structurally_valid_tags_with_wrong_fields_are_malformed(tag: int, fields: list[int]) -> None:
    try:
        decode(msgpack.packb([tag, *fields]))
    except MalformedMessage:
        pass


def test_wrong_signer_is_refused() -> None:
    r = Receipt(os.urandom(16), "devnet", OTHER.peer_id, SIGNER.peer_id, "m", bytes(32), bytes(32), 1, 2, 3, False, 4, b"")
    with pytest.raises(LocalProtocolError):
        r.signed(OTHER)
    forged = r.signed(SIGNER)
    import dataclasses

    tampered = dataclasses.replace(forged, price=10**9)
    with pytest.raises(BadSignature):
        tampered.verify()


def test_expect_restricts_classes() -> None:
    with pytest.raises(MalformedMessage, match="expected Accept"):
        decode(encode(Chunk(0, "x")), Accept)


def test_value_rules() -> None:
    bad = msgpack.packb([13, -1, "x"])
    with pytest.raises(MalformedMessage, match="index"):
        decode(bad)
    with pytest.raises(MalformedMessage, match="bool"):
        decode(msgpack.packb([11, True]))


# -- framing ---------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(1, 64))
def test_frames_survive_any_chunking(payloads: list[bytes], step: int) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(stream), step):
        dec.feed(stream[i : i + step])
        while (f := dec.next_frame()) is not None:
            out.append(f)
    assert out == payloads
    assert dec.buffered == 0


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_uvarint_round_trip(n: int) -> None:
    enc = encode_uvarint(n)
    assert decode_uvarint(enc) == (n, len(enc))
    assert decode_uvarint(enc[:-1]) is None


def test_oversized_frame_is_refused_before_buffering() -> None:
    dec = FrameDecoder(max_frame=1024)
    dec.feed(encode_uvarint(1025))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    with pytest.raises(MalformedMessage):
        dec.next_frame()  # poisoned
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 1025, max_frame=1024)


def test_overlong_and_non_minimal_varints() -> None:
    dec = FrameDecoder()
    dec.feed(b"\xff" * 11)
    with pytest.raises(MalformedMessage, match="longer than 10"):
        dec.next_frame()
    with pytest.raises(MalformedMessage, match="non-minimal"):
        decode_uvarint(b"\x80\x00")


def test_default_max_frame_is_4_mib() -> None:
    assert FrameDecoder().max_frame == 4 * 1024 * 1024
