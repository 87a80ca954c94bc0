"""OpenAIBackend over httpx.MockTransport (parsing, errors, load) and a real fake server process."""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from p2pserve.backends.base import Finished, GenerationEvent, Kind, TextDelta
from p2pserve.backends.fake import FakeBackend
from p2pserve.backends.http import HTTPBroken
from p2pserve.backends.metrics import load_from_metrics, parse_prometheus
from p2pserve.backends.openai import OpenAIBackend, Timeouts
from p2pserve.backends.sse import SSEDecoder
from p2pserve.errors import BackendError, BackendResponseError, BackendTimeout, BackendUnavailable, map_exceptions

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "tell me about rivers"}]}
COMPLETION: dict[str, Any] = {"prompt": "Once upon a time"}


async def collect(backend: OpenAIBackend, kind: Kind, body: dict[str, Any], continuation: str = "") -> list[GenerationEvent]:
    return [event async for event in backend.generate(kind, body, continuation=continuation)]


def text_of(events: list[GenerationEvent]) -> str:
    assert isinstance(events[-1], Finished)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(e.text for e in events[:-1] if isinstance(e, TextDelta))


def sse(*objs: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chat_chunk(content: str | None = None, finish: str | None = None, model: str = "m", **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


class Split(httpx.AsyncByteStream):
    """A body delivered in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if not self.pieces:
            raise StopAsyncIteration
        return self.pieces.pop(0)


def serve_bytes(data: bytes | list[bytes], status: int = 200, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.url.path == "/metrics":
            return httpx.Response(404)
        pieces = data if isinstance(data, list) else [data]
        return httpx.Response(status, headers={"content-type": "text/event-stream"}, stream=Split(pieces))

    return httpx.MockTransport(handler)


def backend(transport: httpx.AsyncBaseTransport, **kw: Any) -> OpenAIBackend:
    return OpenAIBackend(kw.pop("model", "m"), kw.pop("base_url", "http://backend:8000"), transport=transport, **kw)


# -- SSE decoding ----------------------------------------------------------------------------

STREAM = (b": keep-alive\r\n\r\ndata: {\"a\": \"\xc3\xa9\xe2\x82\xac\"}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\n"
          b"id: 7\rdata: cr\r\rdata: [DONE]\n\n")
EXPECTED = ['{"a": "\u00e9\u20ac"}', "line1\nline2", "cr", "[DONE]"]


def test_sse_decoder_whole_and_every_split_point() -> None:
    assert SSEDecoder().feed(STREAM) == EXPECTED
    for cut in range(len(STREAM)):
        d = SSEDecoder()
        assert d.feed(STREAM[:cut]) + d.feed(STREAM[cut:]) + d.close() == EXPECTED, cut


def test_sse_decoder_random_and_byte_splits() -> None:
    rng = random.Random(3)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        d = SSEDecoder()
        out = []
        for a, b in zip([0, *cuts], [*cuts, len(STREAM)]):
            out += d.feed(STREAM[a:b])
        assert out == EXPECTED
    d = SSEDecoder()
    assert [p for i in range(len(STREAM)) for p in d.feed(STREAM[i : i + 1])] == EXPECTED


def test_sse_decoder_rejects_garbage_and_huge_events() -> None:
    with pytest.raises(BackendResponseError):
        SSEDecoder().feed(b"this is not an SSE line\n\n")
    with pytest.raises(BackendResponseError):
        SSEDecoder().feed(b"foo: bar\n")
    with pytest.raises(BackendResponseError):
        SSEDecoder(max_event_bytes=10).feed(b"data: " + b"x" * 20)
    with pytest.raises(BackendResponseError):
        SSEDecoder().feed(b"data: \xff\xfe\n\n")
    assert SSEDecoder().feed(b"data: tail") == []
    d = SSEDecoder()
    d.feed(b"data: tail")
    assert d.close() == ["tail"]


# -- generation over hand-written streams -------------------------------------------------------


async def test_chat_stream_with_usage_and_request_shape() -> None:
    seen: list[httpx.Request] = []
    data = sse({"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
               chat_chunk("Hel"), chat_chunk("lo"), chat_chunk(finish="stop"),
               {"model": "m", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}})
    b = backend(serve_bytes(data, seen=seen), api_key="sk-test", gen_params={"max_tokens": 9, "temperature": 0.5})
    events = await collect(b, "chat", {**CHAT, "temperature": 0.0, "stream": False, "n": 3})
    assert text_of(events) == "Hello" and events[-1] == Finished("stop", 11, 2)
    request = seen[0]
    assert request.url == "http://backend:8000/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    sent = json.loads(request.content)
    assert sent == {**CHAT, "model": "m", "stream": True, "stream_options": {"include_usage": True},
                    "max_tokens": 9, "temperature": 0.0}
    await b.aclose()
    await b.aclose()


async def test_completion_split_into_single_bytes_and_counts_tokens_without_usage() -> None:
    data = sse({"model": "m", "choices": [{"index": 0, "text": " caf\u00e9", "finish_reason": None}]},
               {"model": "m", "choices": [{"index": 0, "text": " au lait", "finish_reason": None}]},
               {"model": "m", "choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    pieces = [data[i : i + 1] for i in range(len(data))]
    b = backend(serve_bytes(pieces), base_url="http://backend:8000/v1/")
    events = await collect(b, "completion", COMPLETION)
    assert text_of(events) == " caf\u00e9 au lait"
    assert events[-1] == Finished("length", 4, 2)  # prompt: ceil(16 chars / 4); completion: chunks


async def test_missing_done_is_tolerated_after_a_finish_reason() -> None:
    b = backend(serve_bytes(sse(chat_chunk("x"), chat_chunk(finish="stop"), done=False)))
    assert text_of(await collect(b, "chat", CHAT)) == "x"


async def test_no_auth_header_without_api_key() -> None:
    seen: list[httpx.Request] = []
    b = backend(serve_bytes(sse(chat_chunk("x"), chat_chunk(finish="stop")), seen=seen))
    await collect(b, "chat", CHAT)
    assert "authorization" not in seen[0].headers


async def test_served_model_name_is_sent_and_checked() -> None:
    seen: list[httpx.Request] = []
    data = sse(chat_chunk("x", model="org/Model-7B"), chat_chunk(finish="stop", model="org/Model-7B"))
    b = backend(serve_bytes(data, seen=seen), model="model-7b", served_model="org/Model-7B")
    assert text_of(await collect(b, "chat", CHAT)) == "x"
    assert json.loads(seen[0].content)["model"] == "org/Model-7B"
    lax = backend(serve_bytes(data), check_model=False)
    assert text_of(await collect(lax, "chat", CHAT)) == "x"


async def test_continuation_bodies() -> None:
    seen: list[httpx.Request] = []
    data = sse(chat_chunk("y"), chat_chunk(finish="stop"))
    b = backend(serve_bytes(data, seen=seen))
    await collect(b, "chat", CHAT, continuation="The answer")
    sent = json.loads(seen[-1].content)
    assert sent["messages"][-1] == {"role": "assistant", "content": "The answer"}
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    plain = backend(serve_bytes(data, seen=seen), continue_final_message=False)
    await collect(plain, "chat", CHAT, continuation="The answer")
    assert "continue_final_message" not in json.loads(seen[-1].content)
    completion = sse({"model": "m", "choices": [{"index": 0, "text": "!", "finish_reason": "stop"}]})
    c = backend(serve_bytes(completion, seen=seen))
    await collect(c, "completion", {"prompt": ["Hi"]}, continuation=" there")
    assert json.loads(seen[-1].content)["prompt"] == "Hi there"
    with pytest.raises(BackendResponseError):
        await collect(c, "completion", {"prompt": [1, 2, 3]}, continuation=" there")


# -- error mapping ---------------------------------------------------------------------------


def raising(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("transport", "error", "status"),
    [
        (raising(httpx.ConnectError("refused")), BackendUnavailable, None),
        (raising(httpx.ReadError("reset")), BackendUnavailable, None),
        (raising(httpx.ConnectTimeout("slow")), BackendTimeout, None),
        (raising(httpx.ReadTimeout("slow")), BackendTimeout, None),
        (serve_bytes(b'{"error": "boom"}', status=500), BackendResponseError, 500),
        (serve_bytes(b"", status=429), BackendResponseError, 429),
        (serve_bytes(b"data: {not json\n\n"), BackendResponseError, 200),
        (serve_bytes(b"garbage\n\n"), BackendResponseError, 200),
        (serve_bytes(sse(chat_chunk("x"))[:-len(b"data: [DONE]\n\n")]), BackendResponseError, 200),
        (serve_bytes(sse(chat_chunk("x", model="other"))), BackendResponseError, 200),
        (serve_bytes(sse({"error": {"message": "oom", "code": 500}})), BackendResponseError, 500),
        (serve_bytes(sse(["not", "an", "object"])), BackendResponseError, 200),
        (serve_bytes(sse({"model": "m", "choices": "nope"})), BackendResponseError, 200),
        (serve_bytes(sse(chat_chunk("x"))), BackendResponseError, 200),  # [DONE] but no finish_reason
    ],
)
async def test_error_mapping(transport: httpx.MockTransport, error: type[BackendError], status: int | None) -> None:
    b = backend(transport)
    with pytest.raises(error) as info:
        await collect(b, "chat", CHAT)
    assert type(info.value) is error and info.value.__cause__ is not None or error is BackendResponseError
    if isinstance(info.value, BackendResponseError):
        assert info.value.status_code == status
    assert b.inflight == 0


async def test_cut_mid_stream_after_tokens() -> None:
    fake = FakeBackend(cut_after=3)
    fake.inject("cut")
    b = backend(fake.mock_transport(), model="fake")
    got: list[str] = []
    with pytest.raises(BackendResponseError) as info:
        async for event in b.generate("chat", CHAT):
            if isinstance(event, TextDelta):
                got.append(event.text)
    cause = info.value.__cause__
    assert len(got) == 2 and isinstance(cause, HTTPBroken) and isinstance(cause.__cause__, httpx.RemoteProtocolError)


async def test_stall_before_first_byte_times_out(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend()
    fake.inject("stall")
    b = backend(fake.mock_transport(), model="fake", timeouts=Timeouts(first_byte=5.0))
    start = trio.current_time()
    with pytest.raises(BackendTimeout):
        await collect(b, "chat", CHAT)
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_stall_mid_stream_and_total_deadline(autojump_clock: trio.testing.MockClock) -> None:
    slow = FakeBackend(tpot_s=30.0)
    b = backend(slow.mock_transport(), model="fake", timeouts=Timeouts(read=10.0))
    with pytest.raises(BackendTimeout):
        await collect(b, "chat", CHAT)
    steady = FakeBackend(tpot_s=1.0)
    b = backend(steady.mock_transport(), model="fake", timeouts=Timeouts(read=10.0, total=3.5))
    start = trio.current_time()
    with pytest.raises(BackendTimeout):
        await collect(b, "completion", {**COMPLETION, "max_tokens": 20})
    assert trio.current_time() - start == pytest.approx(3.5)
    assert steady.snapshot().running == 0  # the fake's slot was released: the request was closed


async def test_cancelling_the_consumer_closes_the_request(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend(tpot_s=1.0, dialect="none")
    b = backend(fake.mock_transport(), model="fake")
    gen = b.generate("completion", {**COMPLETION, "max_tokens": 20})
    assert isinstance(await gen.__anext__(), TextDelta)
    assert fake.snapshot().running == 1 and (await b.load()).running == 1
    await gen.aclose()  # type: ignore[attr-defined]
    assert fake.snapshot().running == 0 and b.inflight == 0


# -- load --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["vllm", "sglang", "llamacpp"])
async def test_load_from_each_metrics_dialect(dialect: Any, autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend(dialect=dialect, max_running=1, tpot_s=1.0, kv_tokens_total=100)
    b = backend(fake.mock_transport(), model="fake")
    assert (await b.load()).source == "metrics"
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(collect, b, "completion", {**COMPLETION, "max_tokens": 4})
        await trio.sleep(1.5)
        load = await b.load()
        assert (load.running, load.queued, load.source) == (1, 2, "metrics")
        assert load.token_usage == (None if dialect == "llamacpp" else pytest.approx(0.06))


async def test_metrics_are_cached_briefly(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend()
    scrapes = 0

    async def counting(request: httpx.Request) -> httpx.Response:
        nonlocal scrapes
        scrapes += request.url.path == "/metrics"
        return await fake.handle_httpx(request)

    b = backend(httpx.MockTransport(counting), model="fake")
    await b.load()
    await b.load()
    assert scrapes == 1
    await trio.sleep(0.6)
    await b.load()
    assert scrapes == 2


async def test_no_metrics_means_inflight_counts(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend(dialect="none", tpot_s=1.0)
    b = backend(fake.mock_transport(), model="fake", max_concurrency=2)
    assert (await b.load()).source == "inflight"
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(collect, b, "chat", {**CHAT, "max_tokens": 5})
        await trio.sleep(1.5)
        load = await b.load()
        assert (load.running, load.queued, load.token_usage, load.source) == (2, 1, None, "inflight")
    assert (await b.load()).running == 0
    off = backend(fake.mock_transport(), model="fake", metrics="off")
    assert (await off.load()).source == "inflight"


async def test_metrics_failure_is_unknown_load(autojump_clock: trio.testing.MockClock) -> None:
    state = {"mode": "ok"}
    fake = FakeBackend()

    async def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            if state["mode"] == "500":
                return httpx.Response(500)
            if state["mode"] == "down":
                raise httpx.ConnectError("refused")
            if state["mode"] == "hang":
                await trio.sleep_forever()
        return await fake.handle_httpx(request)

    b = backend(httpx.MockTransport(flaky), model="fake", timeouts=Timeouts(metrics=1.0))
    assert (await b.load()).source == "metrics"
    for mode in ("500", "down", "hang"):
        state["mode"] = mode
        await trio.sleep(1.0)
        load = await b.load()
        assert load.source == "unknown" and not load.known, mode
    state["mode"] = "ok"
    await trio.sleep(1.0)
    assert (await b.load()).source == "metrics"


async def test_unreachable_backend_reports_unknown_load() -> None:
    b = backend(raising(httpx.ConnectError("refused")))
    assert (await b.load()).source == "unknown"


def test_metrics_parser_edge_cases() -> None:
    text = """# HELP vllm:num_requests_running Number of requests.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a",engine="0"} 2.0
vllm:num_requests_running{model_name="a",engine="1"} 3
vllm:num_requests_waiting{model_name="a,b",engine="0"} 1e1 1712345678000
vllm:num_requests_waiting{model_name="a\\"q",engine="1"} NaN
vllm:gpu_cache_usage_perc{engine="0"} 0.2
vllm:gpu_cache_usage_perc{engine="1"} 0.7
vllm:generation_tokens_total{engine="0"} +Inf
broken line here
"""
    samples = parse_prometheus(text)
    assert samples[3].label("model_name") == 'a"q'
    assert samples[-1].name == "vllm:generation_tokens_total" and samples[-1].value == float("inf")
    load = load_from_metrics(text)
    assert load is not None
    assert (load.running, load.queued, load.token_usage, load.source) == (5, 10, 0.7, "metrics")
    assert load_from_metrics("process_cpu_seconds_total 3.0\n") is None
    assert load_from_metrics("") is None
    both = 'vllm:kv_cache_usage_perc 0.1\nvllm:gpu_cache_usage_perc 0.9\nvllm:num_requests_running 1\n'
    assert load_from_metrics(both).token_usage == 0.1  # type: ignore[union-attr]
    assert load_from_metrics("sglang:num_queue_reqs{tp_rank=\"0\"} 4\nsglang:token_usage 1.5\n") == \
        load_from_metrics("sglang:num_queue_reqs 4\nsglang:token_usage 1.0\n")


# -- against the fake in-process (same client code path) -----------------------------------------


async def test_fake_roundtrip_and_fail_over_continuation() -> None:
    fake = FakeBackend()
    b = backend(fake.mock_transport(), model="fake", gen_params={"max_tokens": 50})
    full = text_of(await collect(b, "chat", CHAT))
    rest = await collect(b, "chat", CHAT, continuation=full[:12])
    assert full[:12] + text_of(rest) == full
    done = await collect(b, "completion", COMPLETION)
    assert isinstance(done[-1], Finished) and done[-1].completion_tokens == len(done) - 1


# -- against a real local server process ----------------------------------------------------------


@pytest.fixture
def fake_server_process() -> Iterator[Callable[..., str]]:
    """Start ``python -m p2pserve.backends.fake`` on 127.0.0.1:0; returns its base URL."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pserve.backends.fake", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30.0)  # bounded wait for the bind line
        assert ready, "the fake backend process did not start within 30 s"
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        return line.split()[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_real_fake_server_process(fake_server_process: Callable[..., str]) -> None:
    url = fake_server_process("--model", "fake", "--dialect", "sglang", "--schedule", "2=cut,3=http503")
    b = OpenAIBackend("fake", url, api_key="k", timeouts=Timeouts(connect=5, first_byte=10, read=10, total=20))
    with trio.fail_after(30):
        chat = await collect(b, "chat", CHAT)
        assert text_of(chat) == text_of(await collect(backend(FakeBackend().mock_transport(), model="fake"), "chat", CHAT))
        completion = await collect(b, "completion", {**COMPLETION, "max_tokens": 3})
        assert completion[-1] == Finished("length", 4, 3)
        with pytest.raises(BackendResponseError):
            await collect(b, "chat", CHAT)  # cut mid-stream by the server
        with pytest.raises(BackendResponseError) as info:
            await collect(b, "chat", CHAT)
        assert info.value.status_code == 503
        load = await b.load()
        assert (load.source, load.running, load.queued, load.token_usage) == ("metrics", 0, 0, 0.0)
        await b.aclose()
        down = OpenAIBackend("fake", "http://127.0.0.1:9", timeouts=Timeouts(connect=5))
        with pytest.raises(BackendUnavailable):
            await collect(down, "chat", CHAT)
        await down.aclose()


def test_map_exceptions_translates_at_the_edge() -> None:
    """errors.map_exceptions, as _open uses it: first match in order, chained, others untouched."""
    errors = map_exceptions({
        httpx.ConnectTimeout: BackendTimeout,
        httpx.TimeoutException: lambda exc: BackendTimeout(f"late: {exc}"),
        httpx.HTTPError: BackendUnavailable,
    })
    with pytest.raises(BackendTimeout, match="^connect$") as timeout:
        with errors:
            raise httpx.ConnectTimeout("connect")
    assert isinstance(timeout.value.__cause__, httpx.ConnectTimeout)
    with pytest.raises(BackendTimeout, match="late: read"), errors:
        raise httpx.ReadTimeout("read")
    with pytest.raises(BackendUnavailable), errors:  # the same instance is reusable
        raise httpx.ConnectError("refused")
    with pytest.raises(KeyError), errors:  # not listed: passes unchanged
        raise KeyError("x")
    with errors:
        pass


async def test_each_event_is_its_own_delta_even_when_one_read_holds_several() -> None:
    """Callers count TextDeltas as tokens (partial receipts, what a continuation elsewhere may
    still generate), so the events of one read are not merged into one delta."""
    body = sse(chat_chunk("a"), chat_chunk("b"), chat_chunk("c"), chat_chunk(None, "stop"))
    events = await collect(backend(serve_bytes(body)), "chat", CHAT)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", "b", "c"]
    # but they say that more follow at once: a writer holds them for the last of the read
    assert [e.more for e in events if isinstance(e, TextDelta)] == [True, True, False]


async def test_more_is_never_set_on_the_last_delta_of_a_read() -> None:
    reads = [sse(chat_chunk("a"), chat_chunk("b"), done=False), sse(chat_chunk("c"), done=False),
             sse(chat_chunk(None, "stop"), chat_chunk("d"), done=False) + b"data: [DONE]\n\n"]
    events = await collect(backend(serve_bytes(reads)), "chat", CHAT)
    assert [(e.text, e.more) for e in events if isinstance(e, TextDelta)] == [
        ("a", True), ("b", False), ("c", False), ("d", False)]


async def test_a_bad_event_ends_the_stream_after_the_good_ones_of_its_read() -> None:
    """The events of one read before a malformed one were generated: they are delivered
    (and counted) before the error, as when each event was handled on its own."""
    body = sse(chat_chunk("a"), chat_chunk("b"), done=False) + b"data: {not json\n\n" + sse(chat_chunk("c"))
    got: list[TextDelta] = []
    with pytest.raises(BackendResponseError, match="malformed JSON"):
        async for event in backend(serve_bytes(body)).generate("chat", CHAT):
            if isinstance(event, TextDelta):
                got.append(event)
    assert [(e.text, e.more) for e in got] == [("a", True), ("b", False)]
