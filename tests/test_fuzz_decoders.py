"""Fuzz targets for every decoder that reads bytes a peer or a user controls.

Each target below takes one ``bytes`` input and checks the decoder's contract on it:

* it raises nothing but the documented error of its layer (``MalformedMessage`` /
  ``FrameTooLarge``, i.e. :class:`~p2pserve.errors.RemoteProtocolError`, on the wire;
  :class:`~p2pserve.errors.BadRequest` for OpenAI bodies), never hangs;
* what it accepts is usable: a decoded message re-encodes without error and round-trips
  (``decode(encode(m)) == m``, a fixpoint after one re-encoding: the codec promises valid
  messages, not canonical input); decoders that promise canonical bytes
  (``decode_block``, ``decode_body``, ``decode_uvarint``) give back exactly the input;
* the checks a node runs next on a decoded message (signature verification, a block's
  body, an equivocation proof, a duel order, a judge task, the nested bytes of a sync
  answer) also raise only protocol errors.

Hypothesis drives them here (arbitrary bytes, type-shaped raw arrays built from the
message registry, and mutations of valid encodings: bit flips, truncation, extension,
huge declared lengths, nesting bombs, non-minimal widths, wrong field types);
``bench/fuzz_atheris.py`` runs the same targets coverage-guided. A crash it finds
becomes a regression test at the end of this file.

Every registered message type is covered: the registry is enumerated (never a hard-coded
list), and a new type without a seed here fails :func:`test_every_registered_message_has_a_seed`.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
import random
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgpack
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2pserve.ledger
import p2pserve.wire
from p2pserve.api.openai import _parse_json, openai_routes, unsupported_field, validate_body
from p2pserve.backends.openai_format import chat_messages, prompt_text
from p2pserve.crypto import Signer, sha256
from p2pserve.errors import (
    BadRequest,
    ConnectionBroken,
    FrameTooLarge,
    MalformedMessage,
    NoCapacity,
    RemoteProtocolError,
)
from p2pserve.ledger.blocks import (
    ZERO_HASH,
    Block,
    ClaimBody,
    EquivocationProof,
    Kind,
    NetworkParams,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
    VerdictBody,
    decode_block,
    decode_body,
    make_block,
    signing_bytes_of,
)
from p2pserve.ledger.sync import decode_gossip
from p2pserve.net.framed import FramedStream
from p2pserve.testing.duel import duel_order, verdict_body
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, World
from p2pserve.wire.codec import Message, SignedMessage, decode, encode, registry
from p2pserve.wire.duel import DuelOrder, JudgeCandidate, JudgeRefusal, JudgeTask, Verdict
from p2pserve.wire.framing import FrameDecoder, decode_uvarint, encode_frame, encode_uvarint
from p2pserve.wire.gossip import ModelStatus, Status
from p2pserve.wire.infer import Accept, Cancel, Chunk, Done, Failure, InferRequest, Receipt, Reject
from p2pserve.wire.limits import Limits
from p2pserve.wire.sync import SyncBatch, SyncDone, SyncHead, SyncHeads, SyncMismatch


def _import_all(pkg: types.ModuleType) -> None:
    """Import every module of ``pkg`` so every ``@message`` class is in the registry."""
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)


_import_all(p2pserve.wire)
_import_all(p2pserve.ledger)

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
"""Deterministic (CI-stable) and cheap: the whole file stays well under 25 s."""

MAX_FRAME = 4096
"""The frame limit the framing targets run with (small, so FrameTooLarge is reachable)."""

# --- seeds: one or more valid instances of every registered message -------------------------


@functools.cache
def seed_messages() -> tuple[Message, ...]:
    """Valid instances of every registered message type (deterministic keys and values)."""
    w = World(random.Random(7))
    for name in ("r", "a", "b", "j1", "j2"):
        w.signer(name)
    requester, executor = w.signer("r"), w.signer("a")
    net = TEST_PARAMS.network_id
    rid = bytes(range(16))
    status = Status(net, requester.peer_id, 5, 1_000, ("/ip4/127.0.0.1/tcp/1",),
                    (ModelStatus("m", 4096, 10, 1, 0, 0.5, True), ModelStatus("n", 1, 0, 0, 0, None, False)),
                    True, 1, 0, 3 * CREDIT, bytes(32), 2_000, True, TEST_PARAMS.digest(), b"").signed(requester)
    request = InferRequest(rid, net, requester.peer_id, executor.peer_id, "m", "chat", b'{"messages": []}', 1_000, "",
                           5, b"").signed(requester)
    receipt = Receipt(rid, net, requester.peer_id, executor.peer_id, "m", request.request_hash(), sha256(b"x"), 1, 2, 3,
                      False, 1_000, b"").signed(executor)
    order = duel_order(w, "r", "a", "b", [("j1", 5 * CREDIT), ("j2", 5 * CREDIT)], judges=2)
    judge = w.signer("j1")
    fee = Receipt(order.order_id()[:16], net, requester.peer_id, judge.peer_id, "p2pserve/judge", sha256(b"h"),
                  sha256(b"v"), 0, 0, 1, False, 1_000, b"").signed(judge)

    def block(signer: Signer, height: int, body: Any, prev: bytes = ZERO_HASH) -> Block:
        return make_block(signer, network_id=net, height=height, prev=prev, body=body, timestamp_ms=1_000 + height)

    bodies = (OpenBody(CREDIT), StakeBody(2), UnstakeBody(1), PayBody((receipt,)),
              ClaimBody(requester.peer_id, 3, bytes(32), 3), verdict_body(w, order, "A"), verdict_body(w, order, "tie"))
    blocks = tuple(block(requester if isinstance(b, PayBody) else executor if not isinstance(b, VerdictBody) else judge,
                         i, b, bytes(32) if i else ZERO_HASH) for i, b in enumerate(bodies))
    proof = EquivocationProof(block(executor, 0, OpenBody(0)), block(executor, 0, OpenBody(1)))
    head = SyncHead(executor.peer_id, 0, blocks[0].digest())
    return (
        status, *status.models, request, request.header(), Accept(rid), Reject(rid, "busy"), Chunk(0, "hi"), receipt,
        Done("stop", receipt), Failure("cancelled", "gone", receipt), Failure("x", "y", None), Cancel(rid),
        *blocks, *bodies, proof, TEST_PARAMS,
        head, SyncHeads(net, (head,), (bytes(32),), TEST_PARAMS.encode()), SyncBatch(tuple(b.encode() for b in blocks[:3])),
        SyncDone(True, (proof.encode(),)), SyncMismatch(TEST_PARAMS.encode()),
        order, *order.candidates, JudgeCandidate("x", 1),
        JudgeTask(order, b'{"messages": [{"role": "user", "content": "hi"}]}', ("answer of a", "answer of b")),
        Verdict(order.order_id(), judge.peer_id, "B", "fake", ("B", "tie"), (1, 2), fee, b"").signed(judge),
        Verdict(order.order_id(), judge.peer_id, "tie", "m", (), (), None, b"").signed(judge),
        JudgeRefusal(order.order_id(), "not drawn"),
    )


def seed_encodings() -> list[bytes]:
    return [encode(m) for m in seed_messages()]


def seed_blocks() -> list[bytes]:
    return [encode(m) for m in seed_messages() if isinstance(m, Block)]


# --- the targets: bytes in, contract checked -------------------------------------------------


def _exercise(msg: Message) -> None:
    """What a node does next with a decoded message must raise only protocol errors."""
    try:
        if isinstance(msg, SignedMessage):
            assert len(msg.digest()) == 32
            msg.verify()
        if isinstance(msg, Block):
            msg.decoded_body()
        elif isinstance(msg, EquivocationProof):
            msg.key()
            msg.verify()
        elif isinstance(msg, DuelOrder):
            msg.order_id()
            msg.verify_all()
        elif isinstance(msg, JudgeTask):
            msg.mismatch()
        elif isinstance(msg, InferRequest):
            msg.request_hash()
        elif isinstance(msg, NetworkParams):
            msg.digest()
            msg.differences(TEST_PARAMS)
    except RemoteProtocolError:
        pass


def check_message(data: bytes) -> Message | None:
    """The codec: MalformedMessage or a message that re-encodes and round-trips."""
    try:
        msg: Message = decode(data)
    except MalformedMessage:
        return None
    again = encode(msg)  # a decoded message is valid by construction: encodable
    back: Message = decode(again)
    assert back == msg, (back, msg)
    assert encode(back) == again
    _exercise(msg)
    return msg


def check_message_bytes(data: bytes) -> None:
    check_message(data)


def check_block(data: bytes) -> None:
    """``decode_block`` insists on canonical bytes; its body decodes canonically or not at all."""
    try:
        block = decode_block(data)
    except MalformedMessage:
        return
    assert block.encode() == data
    assert signing_bytes_of(data) == block.signing_bytes()
    try:
        body, embedded = decode_body(block.kind, block.body)
    except MalformedMessage:
        return
    assert encode(body) == block.body
    if isinstance(body, PayBody):
        assert embedded == tuple(r.signing_bytes() for r in body.receipts)
    elif isinstance(body, VerdictBody):
        assert embedded == (*(r.signing_bytes() for r in body.order.receipts), body.order.signing_bytes())
    else:
        assert embedded == ()


def check_body(data: bytes) -> None:
    """``decode_body(kind, raw)``: the first byte picks the kind (some invalid), the rest is the body."""
    if not data:
        return
    kind = data[0] % (len(Kind) + 2) - 1
    try:
        body, _ = decode_body(kind, data[1:])
    except MalformedMessage:
        return
    assert encode(body) == data[1:]


def check_gossip(data: bytes) -> None:
    """A gossiped block (canonical) or equivocation proof, and the proof's verification."""
    try:
        obj = decode_gossip(data)
    except MalformedMessage:
        return
    if isinstance(obj, Block):
        assert obj.encode() == data
    else:
        check_message(data)


def check_sync(data: bytes) -> None:
    """A sync message and the bytes nested in it, decoded as :class:`LedgerSync` does."""
    try:
        msg = decode(data, expect=(SyncHeads, SyncBatch, SyncDone, SyncMismatch))
    except MalformedMessage:
        return
    check_message(data)
    if isinstance(msg, SyncBatch):
        for raw in msg.blocks:
            check_gossip(raw)
            check_block(raw)
    elif isinstance(msg, SyncDone):
        for raw in msg.proofs:
            try:
                decode(raw, expect=EquivocationProof)
            except MalformedMessage:
                continue
            check_message(raw)
    elif isinstance(msg, SyncMismatch):
        try:
            decode(msg.genesis, expect=NetworkParams)
        except MalformedMessage:
            return
        check_message(msg.genesis)


def check_uvarint(data: bytes) -> None:
    """Minimal LEB128 or MalformedMessage; None only when the input ends inside the varint."""
    try:
        got = decode_uvarint(data)
    except MalformedMessage:
        return
    if got is None:
        assert len(data) < 10 and all(b & 0x80 for b in data)
        return
    value, end = got
    assert encode_uvarint(value) == data[:end]


def _reference_frames(data: bytes) -> tuple[list[bytes], type[Exception] | None]:
    """All frames of ``data`` fed at once, and the error that ends them (None: clean end)."""
    dec = FrameDecoder(MAX_FRAME)
    dec.feed(data)
    frames: list[bytes] = []
    while True:
        try:
            frame = dec.next_frame()
        except RemoteProtocolError as exc:
            assert isinstance(exc, (MalformedMessage, FrameTooLarge))
            return frames, type(exc)
        if frame is None:
            return frames, (ConnectionBroken if dec.buffered else None)
        frames.append(frame)


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        yield data[pos : pos + n]
        pos += n
        i += 1


def check_frames(data: bytes) -> None:
    """FrameDecoder: the first byte picks a chunk size; any chunking gives the frames (and the
    error) of the whole input at once, frames re-encode to the bytes consumed, and an error
    poisons the decoder."""
    if not data:
        return
    step, data = 1 + data[0] % 37, data[1:]
    want, error = _reference_frames(data)
    assert sum(len(encode_frame(f, MAX_FRAME)) for f in want) <= len(data)
    assert b"".join(encode_frame(f, MAX_FRAME) for f in want) == data[: sum(len(encode_frame(f, MAX_FRAME)) for f in want)]
    dec = FrameDecoder(MAX_FRAME)
    got: list[bytes] = []
    raised: type[Exception] | None = None
    for chunk in _chunks(data, [step]):
        dec.feed(chunk)
        try:
            while (frame := dec.next_frame()) is not None:
                got.append(frame)
        except RemoteProtocolError as exc:
            raised = type(exc)
            break
        assert dec.buffered <= MAX_FRAME + 10 + step
    if raised is not None:
        try:
            dec.next_frame()
        except MalformedMessage:
            pass
        else:
            raise AssertionError("a failed frame decoder went on decoding")
    elif dec.buffered:
        raised = ConnectionBroken
    assert (got, raised) == (want, error)


class ScriptedStream:
    """A transport stream that delivers ``chunks`` then the end of stream (never blocks)."""

    remote_peer = "fuzzer"

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = [c for c in chunks if c]

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._chunks:
            return b""
        chunk = self._chunks.pop(0)
        if max_bytes is not None and len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            self._chunks.insert(0, rest)
        return chunk

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _reference_messages(data: bytes) -> tuple[list[Message], type[Exception] | None]:
    frames, error = _reference_frames(data)
    msgs: list[Message] = []
    for frame in frames:
        try:
            msgs.append(decode(frame))
        except MalformedMessage:
            return msgs, MalformedMessage
    return msgs, error


def run_framed(data: bytes, sizes: list[int]) -> None:
    """FramedStream over ``data`` delivered in chunks of ``sizes``: the messages and the final
    error of the pure reference, then a poisoned stream."""
    want, error = _reference_messages(data)
    got: list[Message] = []
    raised: type[Exception] | None = None

    async def main() -> None:
        nonlocal raised
        fs = FramedStream(ScriptedStream(list(_chunks(data, sizes))), MAX_FRAME)
        with trio.fail_after(30):  # a hang fails the test instead of stalling it
            try:
                while (msg := await fs.recv_or_eof()) is not None:
                    got.append(msg)
            except (RemoteProtocolError, ConnectionBroken) as exc:
                raised = ConnectionBroken if isinstance(exc, ConnectionBroken) else type(exc)
                if isinstance(exc, RemoteProtocolError):
                    try:
                        await fs.recv()
                    except RemoteProtocolError as again:
                        assert type(again) is type(exc)
                    else:
                        raise AssertionError("a failed framed stream went on decoding") from None
            await fs.aclose()

    trio.run(main)
    assert (got, raised) == (want, error)


def check_framed(data: bytes) -> None:
    """The async shell: the first byte picks a chunk size, the rest is what the peer sends."""
    if data:
        run_framed(data[1:], [1 + data[0] % 61])


class _NoCapacityServe:
    """The one thing of a ServeService the request parser reaches: ``submit`` (here it has no
    capacity, so every body that passes validation answers 503) and ``limits``."""

    limits = Limits()

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []

    def submit(self, kind: str, model: str, body: dict[str, Any]) -> AbstractAsyncContextManager[None]:
        self.submitted.append(body)
        serve = self

        class _Refuse:
            async def __aenter__(self) -> None:
                json.dumps(body, separators=(",", ":"), sort_keys=True).encode()  # what the service does first
                json.dumps(body, ensure_ascii=False).encode()  # what an HTTP backend sends (httpx)
                raise NoCapacity(f"no capacity for {model!r} ({len(serve.submitted)})")

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Refuse()

    def known_models(self) -> set[str]:
        return set()


def check_openai(data: bytes) -> None:
    """The OpenAI body parser: the first bit picks chat or completions, the rest is the body.
    Only BadRequest (and its RequestTooLarge); an accepted body reads as the backends read it."""
    if not data:
        return
    kind: typing.Literal["chat", "completion"] = "chat" if data[0] & 1 else "completion"
    check_openai_value(kind, data[1:], parse=True)


def check_openai_value(kind: typing.Literal["chat", "completion"], raw: Any, *, parse: bool = False) -> None:
    try:
        body = _parse_json(raw) if parse else raw
        if unsupported_field(body) is not None:
            return
        model, stream, backend = validate_body(kind, body)
    except BadRequest:
        return
    assert isinstance(model, str) and isinstance(stream, bool)
    options = body.get("stream_options") or {}  # what the endpoint reads next
    bool(options.get("include_usage")) if stream else False
    try:
        chat_messages(backend) if kind == "chat" else prompt_text(backend)
    except BadRequest:
        pass
    json.dumps(backend, separators=(",", ":"), sort_keys=True).encode()
    if parse:  # an accepted body is text: a backend can send it on as UTF-8 JSON
        json.dumps(backend, ensure_ascii=False).encode()


async def post_body(kind: typing.Literal["chat", "completion"], raw: bytes, chunk: int = 4096) -> int:
    """POST ``raw`` to the real ``/v1`` endpoint (raw ASGI, a serving service without capacity);
    the HTTP status it answers."""
    route = openai_routes(_NoCapacityServe())[0 if kind == "chat" else 1]  # type: ignore[arg-type]
    app = route.app
    pieces = [raw[i : i + chunk] for i in range(0, len(raw), chunk)] or [b""]
    incoming = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    await app(scope, receive, send)  # type: ignore[arg-type]
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    return int(starts[0]["status"])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "uvarint": check_uvarint,
    "frames": check_frames,
    "framed_stream": check_framed,
    "message": check_message_bytes,
    "block": check_block,
    "body": check_body,
    "gossip": check_gossip,
    "sync": check_sync,
    "openai": check_openai,
}
"""Every fuzz target by name (``bench/fuzz_atheris.py --target``)."""


def seed_corpus(target: str) -> list[bytes]:
    """Valid inputs to start ``target`` from (in its own input format)."""
    encs = seed_encodings()
    if target == "uvarint":
        return [encode_uvarint(n) for n in (0, 1, 127, 128, 300, 2**32, 2**63)]
    if target in ("frames", "framed_stream"):
        frames = b"".join(encode_frame(e, MAX_FRAME) for e in encs if len(e) <= MAX_FRAME)
        return [b"\x00" + frames, b"\x07" + frames[:4000], b"\x20" + encode_frame(encs[0])]
    if target == "body":
        out = []
        for m in seed_messages():
            if isinstance(m, Block):
                out.append(bytes([m.kind + 1]) + m.body)
        return out
    if target == "sync":
        return [e for e, m in zip(encs, seed_messages()) if isinstance(m, (SyncHeads, SyncBatch, SyncDone, SyncMismatch))]
    if target in ("block", "gossip"):
        return [e for e, m in zip(encs, seed_messages()) if isinstance(m, (Block, EquivocationProof))]
    if target == "openai":
        bodies = [
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
             "stream_options": {"include_usage": True}},
            {"model": "m", "messages": [{"role": "assistant", "content": None},
                                        {"role": "user", "content": [{"type": "text", "text": "a"}]}],
             "temperature": 0.5, "top_p": 1, "n": 1, "stop": ["x"]},
            {"model": "m", "prompt": ["one"], "max_completion_tokens": 3, "stop": "s", "tools": []},
        ]
        return [(b"\x01" if "messages" in b else b"\x00") + json.dumps(b).encode() for b in bodies]
    return encs


# --- hypothesis strategies -------------------------------------------------------------------

_PEERS = [Signer(bytes([i]) * 32).peer_id for i in (1, 2, 3)]
_INTS = st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**64 - 1, -(2**63), 120_000, 120_001]) | st.integers(0, 2**20)
_STRS = st.sampled_from(["", "chat", "completion", "A", "B", "tie", "stop", "testnet", "fake", *_PEERS, "x" * 300]) \
    | st.text(max_size=12)
_BYTES = st.binary(max_size=4) | st.binary(min_size=16, max_size=16) | st.binary(min_size=32, max_size=32) \
    | st.binary(min_size=64, max_size=64) | st.sampled_from([bytes(32), ZERO_HASH, TEST_PARAMS.encode()])
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
JUNK = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                    max_leaves=12)
"""Any msgpack-able value: what a field holds when a peer sends the wrong type."""


def _shape(tp: Any) -> st.SearchStrategy[Any]:
    """Raw (msgpack-level) values of field type ``tp``, as the codec's field decoders read them."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | _shape(inner)
    if origin is tuple:
        return st.lists(_shape(typing.get_args(tp)[0]), max_size=3)
    if isinstance(tp, type) and issubclass(tp, Message):
        return raw_message(tp)
    plain: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(), int: _INTS, float: st.floats() | _INTS, str: _STRS, bytes: _BYTES,
    }
    return plain[tp]


_RAW: dict[int, st.SearchStrategy[list[Any]]] = {}


def raw_message(cls: type[Message]) -> st.SearchStrategy[list[Any]]:
    """``[tag, field, ...]`` with every field of its declared type (values anything)."""
    if cls.TAG not in _RAW:
        hints = typing.get_type_hints(cls)
        _RAW[cls.TAG] = st.tuples(st.just(cls.TAG), *(_shape(hints[n]) for n in cls._names)).map(list)
    return _RAW[cls.TAG]


def any_raw_message() -> st.SearchStrategy[list[Any]]:
    return st.sampled_from(sorted(registry().items())).flatmap(lambda item: raw_message(item[1]))


_HUGE_HEADERS = [b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                 b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff", b"\xda\xff\xff", b"\xc5\xff\xff"]


def _replace_at_path(value: Any, path: list[int], new: Any) -> Any:
    """``value`` (nested lists) with the item that ``path`` leads to replaced by ``new`` (list paths wrap)."""
    if not path or not isinstance(value, list) or not value:
        return new
    i = path[0] % len(value)
    return [*value[:i], _replace_at_path(value[i], path[1:], new), *value[i + 1 :]]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding from ``seeds`` after 1-3 mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "huge", "nest", "splice",
                                   "field", "widen"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "huge":
            data[i:i] = draw(st.sampled_from(_HUGE_HEADERS))
        elif op == "nest":
            depth = draw(st.sampled_from([1, 2, 64, 1100, 20_000]))
            data[i:i] = b"\x91" * depth + (b"\xc0" if draw(st.booleans()) else b"")
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data = data[:i] + other[draw(st.integers(0, max(len(other) - 1, 0))) :]
        elif op == "field":
            try:
                raw = msgpack.unpackb(bytes(data), raw=False)
            except Exception:  # noqa: BLE001 - an earlier mutation broke it: nothing to edit
                continue
            path = draw(st.lists(st.integers(0, 20), min_size=1, max_size=4))
            data = bytearray(msgpack.packb(_replace_at_path(raw, path, draw(JUNK)), use_bin_type=True))
        elif op == "widen" and data:  # a non-minimal width for a positive fixint or a fixstr header
            b = data[i]
            if b < 0x80:
                data[i : i + 1] = draw(st.sampled_from([b"\xcc", b"\xcd\x00", b"\xce\x00\x00\x00", b"\xcf" + bytes(7)])) + bytes([b])
            elif 0xA0 <= b <= 0xBF:
                data[i : i + 1] = b"\xd9" + bytes([b - 0xA0])
    return bytes(data)


_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8) \
    | st.sampled_from(["chat", "user", "assistant", "system", "text", "none", "m", "\ud800", "a\udfffb"])
JSON = st.recursive(_JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(["model", "messages", "prompt", "role", "content", "type", "text", "stream", "stream_options",
                     "include_usage", "max_tokens", "temperature", "top_p", "n", "stop", "tools"]) | st.text(max_size=4),
    c, max_size=5), max_leaves=25)
"""Any JSON-like value, with OpenAI's keys and words overrepresented."""


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """An OpenAI body whose every field is usually right and sometimes any JSON value."""

    def field(good: st.SearchStrategy[Any]) -> Any:
        return draw(good | JSON) if draw(st.booleans()) else draw(good)

    text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=5)})
    content = st.none() | st.text(max_size=5) | st.lists(text_part, max_size=2)
    message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "x"]),
                                     "content": content})
    body: dict[str, Any] = {"model": field(st.sampled_from(["m", "", "\ud800"])), "messages": field(st.lists(message, max_size=3)),
                            "prompt": field(st.text(max_size=5) | st.lists(st.text(max_size=3), max_size=2))}
    for key, good in [("stream", st.booleans()), ("stream_options", st.none() | st.fixed_dictionaries({"include_usage": JSON})),
                      ("max_tokens", st.integers(-2, 10)), ("temperature", st.floats(-1, 3)), ("n", st.integers(0, 2)),
                      ("stop", st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=2)),
                      ("tools", st.sampled_from([None, [], "none", [{"type": "function"}]]))]:
        if draw(st.booleans()):
            body[key] = field(good)
    return body


# --- tests: seeds and registry ---------------------------------------------------------------


def test_every_registered_message_has_a_seed() -> None:
    """The registry is the list of decoders: a new message type needs a seed here."""
    seeded = {type(m).TAG for m in seed_messages()}
    assert set(registry()) <= seeded, f"no seed for tags {sorted(set(registry()) - seeded)}"
    assert len(registry()) >= 30


def test_seeds_are_valid_and_canonical() -> None:
    for m in seed_messages():
        data = encode(m)
        assert decode(data) == m and encode(decode(data)) == data
        if isinstance(m, SignedMessage):
            m.verify()
        if isinstance(m, Block):
            assert decode_block(data) == m
            check_block(data)
    for name, target in TARGETS.items():
        for data in seed_corpus(name):
            target(data)


# --- tests: framing --------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=16))
def test_uvarint_any_bytes(data: bytes) -> None:
    check_uvarint(data)


@FUZZ
@given(st.integers(0, 2**70 - 1))
def test_uvarint_round_trip(n: int) -> None:
    enc = encode_uvarint(n)
    assert decode_uvarint(enc) == (n, len(enc))
    assert decode_uvarint(enc[:-1]) is None


@FUZZ
@given(st.integers(1, 40), st.binary(max_size=600) | mutated(seed_corpus("frames")))
def test_frame_decoder_any_bytes_any_chunking(step: int, data: bytes) -> None:
    check_frames(bytes([step - 1]) + data)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 700), min_size=1, max_size=4),
       st.binary(max_size=300) | mutated([s[1:] for s in seed_corpus("framed_stream")]))
def test_framed_stream_any_bytes_any_chunking(sizes: list[int], data: bytes) -> None:
    run_framed(data, sizes)


def test_framed_stream_huge_length_prefix_is_refused_before_the_payload() -> None:
    run_framed(encode_uvarint(2**63) + b"x" * 100, [3])
    run_framed(b"\xff" * 11, [1])
    run_framed(encode_uvarint(MAX_FRAME + 1), [1])


# --- tests: every message type ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_decode_any_bytes(data: bytes) -> None:
    check_message(data)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(any_raw_message())
def test_decode_type_shaped_arrays_of_every_registered_type(raw: list[Any]) -> None:
    """Right tag, right field count and types, arbitrary values: reaches every ``_check``."""
    check_message(msgpack.packb(raw, use_bin_type=True))


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(seed_encodings()))
def test_decode_mutated_encodings_of_every_registered_type(data: bytes) -> None:
    check_message(data)


@FUZZ
@given(any_raw_message(), st.lists(st.integers(0, 20), min_size=1, max_size=3), JUNK)
def test_wrong_type_in_any_field_is_malformed_or_valid(raw: list[Any], path: list[int], junk: Any) -> None:
    check_message(msgpack.packb(_replace_at_path(raw, [1 + path[0] % max(len(raw) - 1, 1), *path[1:]], junk),
                                use_bin_type=True))


def test_nesting_bombs_and_huge_declared_lengths_are_malformed() -> None:
    for depth in (1, 100, 1024, 1025, 5_000, 200_000):
        check_message(b"\x91" * depth + b"\x01")
        check_message(b"\x92\x01" + b"\x91" * depth + b"\xc0")
    for head in _HUGE_HEADERS:
        check_message(head)
        check_message(b"\x92\x2a" + head + b"\x00" * 8)


# --- tests: ledger blocks, bodies, gossip, sync ----------------------------------------------


@FUZZ
@given(mutated(seed_blocks()) | st.binary(max_size=200))
def test_decode_block_is_canonical_or_malformed(data: bytes) -> None:
    check_block(data)


@FUZZ
@given(mutated(seed_corpus("body")))
def test_decode_body_of_every_kind(data: bytes) -> None:
    check_body(data)


@FUZZ
@given(mutated(seed_corpus("gossip")))
def test_decode_gossip_blocks_and_equivocation_proofs(data: bytes) -> None:
    check_gossip(data)


@FUZZ
@given(mutated(seed_corpus("sync")))
def test_sync_messages_and_their_nested_bytes(data: bytes) -> None:
    check_sync(data)


@FUZZ
@given(st.lists(mutated(seed_blocks()), max_size=3), st.lists(mutated(seed_corpus("gossip")), max_size=2),
       mutated([TEST_PARAMS.encode()]))
def test_sync_answers_carrying_mutated_blocks_proofs_and_genesis(blocks: list[bytes], proofs: list[bytes], genesis: bytes) -> None:
    for msg in (SyncBatch(tuple(blocks)), SyncDone(False, tuple(proofs)), SyncMismatch(genesis[:512])):
        check_sync(encode(msg))


# --- tests: the OpenAI request parser --------------------------------------------------------


@FUZZ
@given(st.sampled_from(["chat", "completion"]), JSON | near_valid_bodies())
def test_validate_body_raises_only_bad_request(kind: typing.Literal["chat", "completion"], body: Any) -> None:
    check_openai_value(kind, body)


@FUZZ
@given(st.binary(max_size=200) | st.builds(lambda v: json.dumps(v).encode(), JSON | near_valid_bodies()) | mutated(
    [s[1:] for s in seed_corpus("openai")]))
def test_openai_body_bytes_raise_only_bad_request(data: bytes) -> None:
    check_openai(b"\x01" + data)
    check_openai(b"\x00" + data)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["chat", "completion"]),
       st.builds(lambda v: json.dumps(v).encode(), JSON | near_valid_bodies()) | st.binary(max_size=100),
       st.integers(1, 64))
def test_openai_endpoint_answers_4xx_or_503_never_500(kind: typing.Literal["chat", "completion"], raw: bytes, chunk: int) -> None:
    status = trio.run(post_body, kind, raw, chunk)
    assert status in (400, 413, 503), status


def test_openai_endpoint_deep_and_huge_bodies() -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 70 + b"1" + b"}" * 70, b"1" * 5000, b'"\\ud800"',
                b'{"model": "\\ud800", "prompt": "x"}', b"\xef\xbb\xbf{}", b"NaN"):
        assert trio.run(post_body, "completion", raw, 4096) in (400, 503)
    assert trio.run(post_body, "chat", b" " * (Limits().max_prompt + 1), 65536) == 413


# --- regression tests: crashes found by bench/fuzz_atheris.py --------------------------------


def test_lone_surrogate_in_a_body_is_a_bad_request_not_a_500() -> None:
    """Found by hand while writing the OpenAI target: an unpaired ``\\ud800`` escape anywhere in
    a body (even a field nobody reads) parsed fine, then the HTTP backend's UTF-8 encoding of
    the body raised UnicodeEncodeError: 500. Now 400 at the parser (CESU bytes too)."""
    for raw in (b'{"model": "m", "prompt": "x", "user": "\\ud800"}', b'{"model": "m", "prompt": "\\udfff"}',
                b'{"model": "m", "prompt": "\xed\xa0\x80"}', b'{"model": "\\ud800", "prompt": "x"}'):
        check_openai(b"\x00" + raw)
        assert trio.run(post_body, "completion", raw, 4096) == 400
    assert trio.run(post_body, "chat", b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}', 4096) == 503
