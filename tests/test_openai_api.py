"""The OpenAI-compatible routes: shapes, SSE, errors, bearer key, and the official client."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.lowlevel
import trio.testing
from starlette.applications import Starlette

from p2pserve.api.openai import openai_routes, validate_body
from p2pserve.backends.base import Load, TextDelta
from p2pserve.errors import BadRequest
from p2pserve.policies import PolicyParams
from p2pserve.wire import Receipt, decode
from tests.serve_harness import Fail, Hang, Node, ScriptedBackend, Sleep, connect_all, start_node
from transports.memory import MemoryNetwork

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@asynccontextmanager
async def api(
    backend: ScriptedBackend | None = None, *, api_key: str | None = None, gateway: bool = False, max_wait_s: float = 1.0
) -> AsyncIterator[tuple[httpx.AsyncClient, Node, Node | None]]:
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        params = PolicyParams(max_wait_s=max_wait_s)
        if gateway:
            node = await start_node(nursery, net, 1, {}, params=params)
            ex = await start_node(nursery, net, 2, {"m": backend or ScriptedBackend()})
            await connect_all(node, [ex])
        else:
            node, ex = await start_node(nursery, net, 1, {"m": backend or ScriptedBackend()}, params=params), None
        app = Starlette(routes=openai_routes(node.serve, api_key=api_key))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
            yield client, node, ex
        nursery.cancel_scope.cancel()


def sse(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_chat_non_stream_shape_via_gateway(autojump_clock: trio.testing.MockClock) -> None:
    async with api(gateway=True) as (client, node, ex):
        assert ex is not None
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "m"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        assert body["p2pserve"]["executor"] == ex.signer.peer_id == r.headers["x-p2pserve-executor"]
        receipt = decode(bytes.fromhex(body["p2pserve"]["receipt"]), Receipt)
        receipt.verify()
        assert receipt.executor == ex.signer.peer_id


async def test_completion_non_stream_local(autojump_clock: trio.testing.MockClock) -> None:
    async with api() as (client, node, _):
        r = await client.post("/v1/completions", json={"model": "m", "prompt": "Once", "max_tokens": 5})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        assert body["choices"][0]["text"] == "Hello world"
        assert body["p2pserve"] == {"executor": node.signer.peer_id, "receipt": None, "local": True}
        assert r.headers["x-p2pserve-executor"] == node.signer.peer_id


async def post_raw(app: Any, payload: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """POST ``payload`` to ``/v1/chat/completions`` of ASGI ``app``; every message the app
    sent, with trio's time when it sent it (each body message is one socket write)."""
    body = json.dumps(payload).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")], "server": ("node", 80)}
    sent: list[tuple[float, dict[str, Any]]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append((trio.current_time(), message))

    await app(scope, receive, send)
    return sent


async def test_chat_stream_chunks(autojump_clock: trio.testing.MockClock) -> None:
    async with api() as (client, node, _):
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-p2pserve-executor"] == node.signer.peer_id
        events = sse(r.text)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == "Hello world"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5


@pytest.mark.parametrize("stream", [False, True])
async def test_the_answer_is_out_before_the_serving_path_wraps_up(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    """The whole body (for a stream: the last chunk and [DONE]) is sent when Completed
    arrives, not after what the serving path does once it yielded it (here: 30 s)."""
    async with api(gateway=True) as (_, node, _ex):
        original = node.serve.submit

        @asynccontextmanager
        async def slow_wrap_up(*args: Any, **kwargs: Any) -> AsyncIterator[AsyncIterator[Any]]:
            async with original(*args, **kwargs) as events:
                async def relay() -> AsyncIterator[Any]:
                    async for ev in events:
                        yield ev
                    await trio.sleep(30)

                yield relay()

        node.serve.submit = slow_wrap_up  # type: ignore[method-assign]
        t0 = trio.current_time()
        sent = await post_raw(Starlette(routes=openai_routes(node.serve)), {**CHAT, "stream": stream})
        assert trio.current_time() - t0 >= 30  # the wrap-up ran (and the app waited for it)
        ended_at = [t for t, m in sent if m["type"] == "http.response.body" and not m.get("more_body", False)]
        assert len(ended_at) == 1 and ended_at[0] - t0 < 5
        text = b"".join(m.get("body", b"") for _, m in sent if m["type"] == "http.response.body").decode()
        if stream:
            assert sse(text)[-1] == "[DONE]"
        else:
            assert json.loads(text)["choices"][0]["message"]["content"] == "Hello world"


async def test_the_tokens_of_one_backend_read_leave_in_one_write(autojump_clock: trio.testing.MockClock) -> None:
    """A backend read that held several token events gives deltas that say ``more``: their
    SSE events leave together with the read's last one (one write, not one per token), and
    every token is still its own event; a token that came alone leaves at once."""
    backend = ScriptedBackend(script=(TextDelta("a", more=True), TextDelta("b", more=True), "c", Sleep(1), "d"))
    async with api(backend) as (_, node, _ex):
        sent = await post_raw(Starlette(routes=openai_routes(node.serve)), {**CHAT, "stream": True})
    bodies = [(t, m["body"].decode()) for t, m in sent if m["type"] == "http.response.body"]
    assert len(bodies) == 3  # role + a + b + c; d; the last chunk and [DONE]
    first, second, last = (sse(b) for _, b in bodies)
    assert [c["choices"][0]["delta"].get("content") for c in first] == ["", "a", "b", "c"]
    assert [c["choices"][0]["delta"]["content"] for c in second] == ["d"]
    assert bodies[1][0] - bodies[0][0] == 1 and last[-1] == "[DONE]"


async def test_completion_stream_chunks(autojump_clock: trio.testing.MockClock) -> None:
    async with api(gateway=True) as (client, _, ex):
        r = await client.post("/v1/completions", json={"model": "m", "prompt": "x", "stream": True})
        events = sse(r.text)
        assert events[-1] == "[DONE]"
        assert "".join(c["choices"][0]["text"] for c in events[:-1]) == "Hello world"
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        assert all(c["object"] == "text_completion" for c in events[:-1])


async def test_stream_failure_after_tokens_ends_with_an_error_event(autojump_clock: trio.testing.MockClock) -> None:
    async with api(ScriptedBackend(script=("a", Fail("boom"))), gateway=True) as (client, _, _ex):
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.status_code == 200
        events = sse(r.text)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["type"] == "request_failed"
        assert "broke off" in events[-2]["error"]["message"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-2]) == "a"


@pytest.mark.parametrize(
    ("path", "payload", "status", "etype"),
    [
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ("/v1/chat/completions", {"model": "m"}, 400, "invalid_request_error"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "invalid_request_error"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "invalid_request_error"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request_error"),
        ("/v1/completions", {"model": "m", "prompt": 3}, 400, "invalid_request_error"),
        ("/v1/completions", {"model": "nope", "prompt": "x", "stream": True}, 404, "model_not_found"),
    ],
)
async def test_errors_in_openai_shape(
    autojump_clock: trio.testing.MockClock, path: str, payload: dict[str, Any], status: int, etype: str
) -> None:
    async with api() as (client, _, _n):
        r = await client.post(path, json=payload)
        assert r.status_code == status
        err = r.json()["error"]
        assert err["type"] == etype and err["message"] and set(err) == {"message", "type", "param", "code"}


async def test_bad_json_and_no_capacity(autojump_clock: trio.testing.MockClock) -> None:
    async with api(ScriptedBackend(load_value=Load(source="unknown"), script=(Hang(),))) as (client, _, _n):
        r = await client.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400
    # a gateway whose only executor refuses everything: 503 after the wait budget, streamed or not
    async with api(ScriptedBackend(load_value=Load(4, 4, 0.99, "metrics")), gateway=True) as (client, _, _n):
        for stream in (False, True):
            r = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            assert r.status_code == 503 and r.json()["error"]["type"] == "no_capacity"


async def test_models_and_bearer_key(autojump_clock: trio.testing.MockClock) -> None:
    async with api(api_key="sekret") as (client, _, _n):
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 401
        r = await client.get("/v1/models", headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "m" and r.json()["object"] == "list"


def test_validate_body_normalizes_and_strips() -> None:
    model, stream, body = validate_body("completion", {"model": "m", "prompt": ["p"], "stream": True, "stream_options": {}})
    assert (model, stream, body) == ("m", True, {"model": "m", "prompt": "p"})
    with pytest.raises(BadRequest, match="'n'"):
        validate_body("chat", {**CHAT, "n": 2})


# openai's AsyncStream stops reading at [DONE] without closing its inner async generators;
# trio then warns when they are collected. That is the client's doing, not the server's.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_official_openai_client_unchanged(autojump_clock: trio.testing.MockClock) -> None:
    async with api(gateway=True) as (client, _, ex):
        assert ex is not None
        oai = openai.AsyncOpenAI(base_url="http://node/v1", api_key="unused", http_client=client, max_retries=0)
        chat = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content == "Hello world"
        assert chat.usage is not None and chat.usage.total_tokens == 5
        assert chat.model_extra is not None and chat.model_extra["p2pserve"]["executor"] == ex.signer.peer_id
        comp = await oai.completions.create(model="m", prompt="x")
        assert comp.choices[0].text == "Hello world"
        stream = await oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == "Hello world"
        del stream
        gc.collect()
        await trio.lowlevel.checkpoint()
        models = await oai.models.list()
        assert [m.id for m in models.data] == ["m"]
        with pytest.raises(openai.NotFoundError):
            await oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


async def test_oversized_body_is_refused_with_413(autojump_clock: trio.testing.MockClock) -> None:
    from p2pserve.api.openai import MAX_BODY

    async with api() as (client, node, _):
        huge = {"model": "m", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 1)}]}
        r = await client.post("/v1/chat/completions", json=huge)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        r = await client.post("/v1/chat/completions", json=CHAT)  # the node still serves
        assert r.status_code == 200


async def test_a_client_that_hangs_up_stops_the_remote_generation() -> None:
    """Issue 7, item 10: a client that hung up mid-stream did not cancel the remote
    generation, and the gateway paid the whole answer (the HTTP server silently drops
    writes to a gone client). Real Hypercorn on 127.0.0.1: the client reads three chunks
    and closes; the executor's backend stops and the gateway pays a partial receipt only."""
    from p2pserve.api.app import build_app, serve_app
    from tests.serve_harness import Sleep

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            net = MemoryNetwork()
            gw = await start_node(nursery, net, 1, {})
            backend = ScriptedBackend(script=[x for i in range(200) for x in (f" w{i}", Sleep(0.02))])
            ex = await start_node(nursery, net, 2, {"m": backend})
            await connect_all(gw, [ex])
            app = build_app(status=dict, metrics=str, host="127.0.0.1", port=0, extra_routes=openai_routes(gw.serve))
            url = await nursery.start(serve_app, app, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=url) as client:
                async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                    seen = 0
                    async for line in r.aiter_lines():
                        seen += line.startswith("data: ")
                        if seen == 4:  # the role chunk and three words
                            break
            while not gw.receipts:
                await trio.sleep(0.01)
            (receipt,) = gw.receipts
            assert receipt.partial and receipt.completion_tokens < 50
            assert backend.running == 0
            nursery.cancel_scope.cancel()
