"""The fake OpenAI-compatible backend: determinism, OpenAI shapes, time model, faults."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from p2pserve.backends.fake import (
    FAULTS,
    WORDS,
    FakeBackend,
    FakeConfig,
    FakeRequestError,
    FullReply,
    StreamReply,
    main,
    plan_request,
    render_metrics,
    response_body,
    serve_fake_backend,
    stream_chunks,
)
from p2pserve.backends.metrics import load_from_metrics

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "tell me about rivers"}]}
COMPLETION = {"model": "fake", "prompt": "Once upon a time"}


async def _call(fake: FakeBackend, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    reply = await fake.handle("POST", path, json.dumps(body).encode())
    if isinstance(reply, FullReply):
        return reply.status, reply.body
    data = b""
    async for chunk in reply.chunks:
        data += chunk
    return reply.status, data


def _sse_objects(data: bytes) -> list[Any]:
    out = []
    for block in data.decode().split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# -- pure core ------------------------------------------------------------------------------


def test_same_request_same_plan_and_different_requests_differ() -> None:
    a = plan_request("chat", CHAT, model="fake")
    assert a == plan_request("chat", dict(CHAT), model="fake")
    other = plan_request("chat", {**CHAT, "messages": [{"role": "user", "content": "about lakes"}]}, model="fake")
    assert other.text != a.text
    seeded = plan_request("chat", {**CHAT, "seed": 7}, model="fake")
    assert seeded.text != a.text
    assert a.id.startswith("chatcmpl-") and len(a.id) == len("chatcmpl-") + 24
    assert 8 <= a.completion_tokens <= 31 and all(p.strip() in WORDS for p in a.pieces)
    assert a.finish_reason == "stop"


def test_max_tokens_gives_a_prefix_and_length_finish() -> None:
    full = plan_request("completion", COMPLETION, model="fake")
    short = plan_request("completion", {**COMPLETION, "max_tokens": 3}, model="fake")
    assert short.pieces == full.pieces[:3] and short.finish_reason == "length"
    exact = plan_request("completion", {**COMPLETION, "max_tokens": full.completion_tokens}, model="fake")
    assert exact.finish_reason == "stop"
    assert all(p.startswith(" ") for p in full.pieces)  # completions continue the prompt


def test_echo_mode() -> None:
    plan = plan_request("chat", {"model": "fake", "messages": [{"role": "user", "content": "echo: hi  there you"}]},
                        model="fake")
    assert plan.text == "hi  there you" and plan.completion_tokens == 3
    plan = plan_request("completion", {"model": "fake", "prompt": "echo: one two"}, model="fake")
    assert plan.text == "one two"


@pytest.mark.parametrize("cut", [1, 5, 6, 9])
def test_chat_continuation_yields_exactly_the_rest(cut: int) -> None:
    full = plan_request("chat", CHAT, model="fake").text
    prefix = full[: cut * 3]
    cont = {**CHAT, "messages": [*CHAT["messages"], {"role": "assistant", "content": prefix}]}
    assert prefix + plan_request("chat", cont, model="fake").text == full


@pytest.mark.parametrize("words", [1, 2, 4])
def test_completion_continuation_yields_exactly_the_rest(words: int) -> None:
    full = plan_request("completion", COMPLETION, model="fake")
    prefix = "".join(full.pieces[:words])
    rest = plan_request("completion", {**COMPLETION, "prompt": COMPLETION["prompt"] + prefix}, model="fake")
    assert prefix + rest.text == full.text


def test_invalid_requests() -> None:
    with pytest.raises(FakeRequestError) as info:
        plan_request("chat", {**CHAT, "model": "other"}, model="fake")
    assert info.value.status == 404
    for bad in ({"model": "fake"}, {**CHAT, "max_tokens": 0}, {**CHAT, "messages": [{"content": "x"}]}):
        with pytest.raises(FakeRequestError) as info:
            plan_request("chat", bad, model="fake")
        assert info.value.status == 400


def test_openai_shapes() -> None:
    plan = plan_request("chat", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}, model="fake")
    body = response_body(plan, created=5)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == plan.text
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": plan.completion_tokens,
                             "total_tokens": 4 + plan.completion_tokens}
    chunks = stream_chunks(plan, created=5)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2]) == plan.text
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == body["usage"]
    completion = plan_request("completion", COMPLETION, model="fake")
    assert [c["choices"][0]["text"] for c in stream_chunks(completion)][:-1] == list(completion.pieces)


@pytest.mark.parametrize("dialect", ["vllm", "sglang", "llamacpp"])
def test_metrics_dialects_parse_back(dialect: Any) -> None:
    from p2pserve.backends.fake import Snapshot

    text = render_metrics(dialect, "fake", Snapshot(running=2, waiting=5, kv_tokens=37, kv_tokens_total=100))
    load = load_from_metrics(text)
    assert load is not None and (load.running, load.queued, load.source) == (2, 5, "metrics")
    assert load.token_usage == (None if dialect == "llamacpp" else pytest.approx(0.37))
    assert render_metrics("none", "fake", Snapshot()) == ""


# -- served through FakeBackend.handle --------------------------------------------------------


async def test_handle_is_byte_identical_and_streams_like_vllm() -> None:
    fake = FakeBackend()
    assert await _call(fake, "/v1/chat/completions", CHAT) == await _call(fake, "/v1/chat/completions", CHAT)
    status, data = await _call(fake, "/v1/completions", {**COMPLETION, "stream": True})
    objs = _sse_objects(data)
    assert status == 200 and objs[-1] == "[DONE]" and objs[-2]["choices"][0]["finish_reason"] == "stop"
    reply = await fake.handle("POST", "/v1/completions", json.dumps({**COMPLETION, "stream": True}).encode())
    assert isinstance(reply, StreamReply) and ("content-type", "text/event-stream") in reply.headers
    async for _ in reply.chunks:
        pass
    assert (await fake.handle("GET", "/health", b"")).status == 200  # type: ignore[union-attr]
    models = await fake.handle("GET", "/v1/models", b"")
    assert isinstance(models, FullReply) and json.loads(models.body)["data"][0]["id"] == "fake"
    assert (await _call(fake, "/v1/chat/completions", {**CHAT, "model": "nope"}))[0] == 404
    assert (await fake.handle("POST", "/v1/chat/completions", b"{nope")).status == 400  # type: ignore[union-attr]
    assert (await fake.handle("GET", "/nowhere", b"")).status == 404  # type: ignore[union-attr]
    snap = fake.snapshot()
    assert snap.requests_total == 4 and snap.running == 0 and snap.kv_tokens == 0


async def test_metrics_404_in_dialect_none() -> None:
    fake = FakeBackend(dialect="none")
    assert (await fake.handle("GET", "/metrics", b"")).status == 404  # type: ignore[union-attr]


async def test_time_model_drives_the_gauges(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend(max_running=2, ttft_s=1.0, tpot_s=0.5, kv_tokens_total=1000)
    done: list[float] = []

    async def one(i: int) -> None:
        await _call(fake, "/v1/completions", {**COMPLETION, "prompt": f"p {i}", "max_tokens": 4})
        done.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, i)
        await trio.sleep(1.6)  # first two: prefill done, two tokens out
        load = load_from_metrics(fake.metrics_text())
        assert load is not None and (load.running, load.queued) == (2, 3)
        assert load.token_usage == pytest.approx((2 * 2 + 2 * 2) / 1000)
    # each request: 1 s to the first token + 3 * 0.5 s; two slots -> three waves
    assert sorted(round(t - start, 3) for t in done) == [2.5, 2.5, 5.0, 5.0, 7.5]
    assert fake.snapshot().running == 0 and fake.snapshot().kv_tokens == 0


async def test_time_scale_zero_is_instant(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend(ttft_s=5.0, tpot_s=1.0, time_scale=0.0)
    start = trio.current_time()
    await _call(fake, "/v1/chat/completions", CHAT)
    assert trio.current_time() == start


# -- faults ----------------------------------------------------------------------------------


async def test_scheduled_http_faults() -> None:
    fake = FakeBackend(schedule={0: "http500", 1: "http503", 2: "http429"})
    statuses = []
    for _ in range(4):
        reply = await fake.handle("POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        assert isinstance(reply, FullReply)
        statuses.append(reply.status)
        if reply.status == 429:
            assert ("retry-after", "1") in reply.headers
    assert statuses == [500, 503, 429, 200]
    assert fake.faults_applied == [(0, "http500"), (1, "http503"), (2, "http429")]


async def test_stall_and_slow(autojump_clock: trio.testing.MockClock) -> None:
    fake = FakeBackend(tpot_s=0.1, stall_s=100.0, slow_factor=10.0)
    fake.inject("stall")
    with trio.move_on_after(50):
        await _call(fake, "/v1/chat/completions", CHAT)
        pytest.fail("a stalled request answered")
    body = {**CHAT, "max_tokens": 5}
    start = trio.current_time()
    await _call(fake, "/v1/chat/completions", body)
    normal = trio.current_time() - start
    fake.inject("slow")
    start = trio.current_time()
    await _call(fake, "/v1/chat/completions", body)
    assert trio.current_time() - start == pytest.approx(10 * normal) and normal == pytest.approx(0.4)


async def test_stream_faults_through_mock_transport() -> None:
    fake = FakeBackend(cut_after=2)
    async with httpx.AsyncClient(transport=fake.mock_transport(), base_url="http://fake") as client:

        async def stream_text() -> str:
            body = {**COMPLETION, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as response:
                return "".join([chunk async for chunk in response.aiter_text()])

        fake.inject("cut")
        with pytest.raises(httpx.RemoteProtocolError):
            await stream_text()
        fake.inject("bad_json")
        assert 'data: {"id": "broken", "choices": [\n' in await stream_text()
        fake.inject("bad_sse")
        assert "\nthis is not an SSE line\n" in await stream_text()
        fake.inject("wrong_model")
        assert '"model": "wrong-model"' in await stream_text()
        fake.inject("bad_json")
        response = await client.post("/v1/completions", json=COMPLETION)
        with pytest.raises(json.JSONDecodeError):
            response.json()
        assert '"model": "fake"' in await stream_text()
    assert fake.snapshot().running == 0


def test_seeded_random_faults_are_reproducible() -> None:
    async def faults(seed: int) -> list[tuple[int, Any]]:
        fake = FakeBackend(fault_rate=0.5, fault_seed=seed, faults=("http500", "http503", "wrong_model"))
        for _ in range(20):
            await _call(fake, "/v1/chat/completions", CHAT)
        return fake.faults_applied

    a, b, c = trio.run(faults, 1), trio.run(faults, 1), trio.run(faults, 2)
    assert a == b and a != c and 3 <= len(a) <= 17


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        FakeConfig(dialect="tgi")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FakeConfig(schedule={0: "explode"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        FakeBackend().inject("explode")  # type: ignore[arg-type]
    assert set(FAULTS) >= {"http500", "stall", "cut", "bad_sse", "slow"}


def test_cli_rejects_unknown_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--schedule", "0=explode"])
    assert "unknown fault" in capsys.readouterr().err


# -- a real HTTP server (hypercorn, loopback) -------------------------------------------------


async def test_real_server_serves_and_cuts() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_fake_backend)
            assert server.base_url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                response = await client.post("/v1/chat/completions", json=CHAT)
                assert response.json() == json.loads((await _call(FakeBackend(), "/v1/chat/completions", CHAT))[1])
                metrics = await client.get("/metrics")
                assert "vllm:num_requests_running" in metrics.text
                server.backend.inject("cut")
                with pytest.raises(httpx.RemoteProtocolError):
                    async with client.stream("POST", "/v1/completions", json={**COMPLETION, "stream": True}) as r:
                        async for _ in r.aiter_bytes():
                            pass
            nursery.cancel_scope.cancel()
