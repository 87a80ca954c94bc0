"""Every error a ``/v1`` client can meet is OpenAI's JSON shape, through the node's real app:
unknown paths and wrong methods, unknown models at ``/v1/models/{id}``, features the network
does not serve (tools, functions), bodies nested too deep, and an unexpected failure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from p2pserve.api.app import build_app
from p2pserve.api.openai import MAX_JSON_DEPTH, json_too_deep, unsupported_field
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.node import Node
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

MODEL = "org/fake-model"  # a slash: /v1/models/{id} takes the rest of the path
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
KEY = "sesame"


@asynccontextmanager
async def node_api(api_key: str | None = None, **app_kw: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Node]]:
    """One real node (memory transport, fake model) behind the real app on 127.0.0.1:5778."""
    raw: dict[str, Any] = {"models": [{"model_path": MODEL, "backend": "fake"}]}
    if api_key:
        raw["server_params"] = {"api_key": api_key}
    async with open_cluster([parse_config(raw)], network=MemoryNetwork(seed=2), seed=2,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as c:
        node = c[0]
        app = build_app(status=node.status, metrics=node.metrics, extra_routes=[*node.api_routes(), *app_kw.pop("routes", [])],
                        api_key=api_key, host="127.0.0.1", port=5778, **app_kw)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5778", headers=headers) as client:
            yield client, node


def openai_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    if code is not None:
        assert err["code"] == code
    assert err["param"] == param
    return dict(err)


async def test_unknown_paths_and_methods_answer_json(autojump_clock: trio.testing.MockClock) -> None:
    async with node_api() as (client, _):
        err = openai_error(await client.get("/v1/nope"), 404, "unknown_url")
        assert "GET /v1/nope" in err["message"] and "/v1/chat/completions" in err["message"]
        openai_error(await client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}), 404, "unknown_url")
        openai_error(await client.get("/v1"), 404, "unknown_url")
        openai_error(await client.get("/nothing/here"), 404, "unknown_url")  # the whole app, not only /v1
        r = await client.get("/v1/chat/completions")
        err = openai_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST" and "POST" in err["message"]
        openai_error(await client.post("/v1/models", json={}), 405, "method_not_allowed")


async def test_model_by_id(autojump_clock: trio.testing.MockClock) -> None:
    async with node_api() as (client, _):
        r = await client.get(f"/v1/models/{MODEL}")
        assert r.status_code == 200
        assert r.json() == {"id": MODEL, "object": "model", "created": 0, "owned_by": "p2pserve"}
        listed = (await client.get("/v1/models")).json()["data"]
        assert listed == [r.json()]
        err = openai_error(await client.get("/v1/models/org/other"), 404, "model_not_found", "model")
        assert "org/other" in err["message"]
        openai_error(await client.get("/v1/models/"), 404, "model_not_found", "model")


async def test_model_by_id_needs_the_key(autojump_clock: trio.testing.MockClock) -> None:
    async with node_api(api_key=KEY) as (client, _):
        assert (await client.get(f"/v1/models/{MODEL}")).status_code == 200
        openai_error(await client.get(f"/v1/models/{MODEL}", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")


@pytest.mark.parametrize(("field", "value"), [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ("tool_choice", "auto"),
    ("tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
])
async def test_tool_calling_is_refused_not_dropped(autojump_clock: trio.testing.MockClock, field: str, value: Any) -> None:
    async with node_api() as (client, node):
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": MODEL, "prompt": "x"})):
            for stream in (False, True):
                r = await client.post(path, json={**body, field: value, "stream": stream})
                err = openai_error(r, 400, "unsupported_parameter", field)
                assert err["type"] == "invalid_request_error" and "not supported" in err["message"]
        assert node.serve.counters.requests == 0  # refused before anything ran
        assert node.status()["recent_requests"][0]["outcome"] == "invalid_request_error"


async def test_absent_tools_are_fine(autojump_clock: trio.testing.MockClock) -> None:
    async with node_api() as (client, _):
        r = await client.post("/v1/chat/completions", json={**CHAT, "tools": [], "tool_choice": "none", "functions": None})
        assert r.status_code == 200, r.text


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 200_000])
async def test_deeply_nested_json_is_a_400(autojump_clock: trio.testing.MockClock, depth: int) -> None:
    async with node_api() as (client, node):
        body = json.dumps(CHAT)[:-1] + f', "metadata": {nested(depth)}}}'
        for path in ("/v1/chat/completions", "/v1/completions"):
            r = await client.post(path, content=body, headers={"Content-Type": "application/json"})
            err = openai_error(r, 400, "invalid_request_error")
            assert "nests more than" in err["message"]
        r = await client.post("/p2pserve/ledger/stake", content=nested(min(depth, 2000)), headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_amount"
        assert node.serve.counters.requests == 0


async def test_nesting_at_the_limit_is_served(autojump_clock: trio.testing.MockClock) -> None:
    async with node_api() as (client, _):
        body = json.dumps(CHAT)[:-1] + f', "metadata": {{"x": {nested(MAX_JSON_DEPTH - 2)}}}}}'
        r = await client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text


async def test_an_unexpected_failure_is_a_json_500(autojump_clock: trio.testing.MockClock) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("bug")

    async with node_api(routes=[Route("/v1/boom", boom)]) as (client, _):
        err = openai_error(await client.get("/v1/boom"), 500, "internal_error")
        assert err["type"] == "server_error" and "bug" not in err["message"]


def test_pure_helpers() -> None:
    assert not json_too_deep({"a": [1, {"b": [2]}]}, limit=4)  # object, array, object, array
    assert json_too_deep({"a": [1, {"b": [2]}]}, limit=3)
    assert not json_too_deep("flat", limit=0)
    assert json_too_deep(json.loads(nested(MAX_JSON_DEPTH + 1)))
    assert unsupported_field({"tools": None, "tool_choice": "none", "functions": []}) is None
    assert unsupported_field({"function_call": {"name": "f"}}) == "function_call"
    assert unsupported_field(["tools"]) is None
