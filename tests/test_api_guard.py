"""The API refuses what a web page could send it: DNS rebinding (a foreign ``Host``),
cross-site requests (a foreign ``Origin``) and "simple" non-JSON POSTs, before any route runs.

The attack these tests reproduce: with no API key (the default), a page on evil.example
POSTs ``{"amount": 5}`` as ``text/plain`` (no CORS preflight needed) to
``/p2pserve/ledger/unstake``, with ``Origin: http://evil.example`` and, after rebinding
evil.example to 127.0.0.1, ``Host: evil.example:5778``. It unstaked the node; the same
shape spent credit on ``/v1/chat/completions``. Legitimate clients (JSON, one of the node's
names, no Origin or the node's own) and the official ``openai`` SDK are unaffected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import openai
import pytest
import trio
import trio.testing

from p2pserve.api.app import HostPolicy, build_app, serve_app
from p2pserve.api.ledger import ledger_routes
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.errors import ConfigError
from p2pserve.ledger.service import LedgerService
from p2pserve.node import Node
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

MODEL = "fake-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
EVIL = {"Origin": "http://evil.example", "Host": "evil.example:5778", "Content-Type": "text/plain"}
MICRO = 1_000_000


@asynccontextmanager
async def guarded_node(**app_kw: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Node]]:
    """One real node (memory transport, fake model, 10 credits staked) behind the real app,
    as if bound on 127.0.0.1:5778; the client's default Host is 127.0.0.1:5778."""
    cfg = parse_config({"ledger_params": {"initial_staked": 10}, "models": [{"model_path": MODEL, "backend": "fake"}]})
    async with open_cluster([cfg], network=MemoryNetwork(seed=3), seed=3,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as c:
        node = c[0]
        with trio.fail_after(30):
            while node.ledger.staked() == 0:
                await trio.sleep(0.1)
        app = build_app(status=node.status, metrics=node.metrics, extra_routes=node.api_routes(),
                        host="127.0.0.1", port=5778, **app_kw)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:5778") as client:
            yield client, node


def error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    return str(err["message"])


async def test_cross_site_and_rebinding_attacks_change_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with guarded_node() as (client, node):
        staked, requests = node.ledger.staked(), node.serve.counters.requests
        body = json.dumps({"amount": 5})
        # the full attack: rebinding Host, foreign Origin, text/plain
        message = error(await client.post("/p2pserve/ledger/unstake", content=body, headers=EVIL), 403, "host_not_allowed")
        assert "evil.example:5778" in message and "allowed_hosts" in message and "127.0.0.1:5778" in message
        error(await client.post("/v1/chat/completions", content=json.dumps(CHAT), headers=EVIL), 403, "host_not_allowed")
        # rebinding with a JSON body (same-origin to the browser, so no preflight stops it)
        rebound = {**EVIL, "Content-Type": "application/json"}
        error(await client.post("/p2pserve/ledger/unstake", content=body, headers=rebound), 403, "host_not_allowed")
        error(await client.get("/p2pserve/status", headers={"Host": "evil.example:5778"}), 403, "host_not_allowed")
        # plain cross-site (the node's real Host), foreign Origin, text/plain or JSON
        for ctype in ("text/plain", "application/json"):
            cross = {"Origin": "http://evil.example", "Content-Type": ctype}
            message = error(await client.post("/p2pserve/ledger/unstake", content=body, headers=cross), 403,
                            "origin_not_allowed")
            assert "http://evil.example" in message and "allowed_origins" in message
            error(await client.post("/v1/chat/completions", content=json.dumps(CHAT), headers=cross), 403,
                  "origin_not_allowed")
        # a simple POST without Origin (an old browser, a form): not JSON, so refused
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/jsonp"):
            for path, payload in (("/p2pserve/ledger/stake", body), ("/v1/completions", json.dumps(CHAT))):
                message = error(await client.post(path, content=payload, headers={"Content-Type": ctype}), 415,
                                "unsupported_media_type")
                assert "application/json" in message
        error(await client.post("/p2pserve/ledger/unstake", content=body), 415, "unsupported_media_type")
        assert node.ledger.staked() == staked == 10 * MICRO
        assert node.serve.counters.requests == requests


async def test_legitimate_requests_still_work(autojump_clock: trio.testing.MockClock) -> None:
    async with guarded_node() as (client, node):
        r = await client.post("/p2pserve/ledger/unstake", json={"amount": 4})
        assert r.status_code == 200, r.text
        assert node.ledger.staked() == 6 * MICRO
        r = await client.post("/p2pserve/ledger/stake", content=b'{"amount": 1}',
                              headers={"Content-Type": "Application/JSON; charset=utf-8", "Origin": "http://localhost:5778"})
        assert r.status_code == 200, r.text
        assert node.ledger.staked() == 7 * MICRO
        for host in ("localhost:5778", "[::1]:5778", "LOCALHOST:5778"):
            assert (await client.get("/p2pserve/status", headers={"Host": host})).status_code == 200
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://127.0.0.1:5778"})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert node.serve.counters.requests == 1


# openai's AsyncStream leaves generators for trio to warn about (see test_openai_api.py).
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_official_openai_client_through_the_guard(autojump_clock: trio.testing.MockClock) -> None:
    async with guarded_node() as (client, _node):
        oai = openai.AsyncOpenAI(base_url="http://127.0.0.1:5778/v1", api_key="unused", http_client=client, max_retries=0)
        chat = await oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert chat.choices[0].message.content
        comp = await oai.completions.create(model=MODEL, prompt="x", max_tokens=4)
        assert comp.choices[0].text
        assert [m.id for m in (await oai.models.list()).data] == [MODEL]


async def test_listed_names_and_origins_and_cors(autojump_clock: trio.testing.MockClock) -> None:
    async with guarded_node(allowed_hosts=["node.example"], allowed_origins=["https://app.example"]) as (client, node):
        r = await client.get("/p2pserve/status", headers={"Host": "node.example:8443"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        # a listed origin's page: preflight granted, answers carry CORS headers
        pre = await client.options("/p2pserve/ledger/unstake", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "content-type" in pre.headers["access-control-allow-headers"]
        r = await client.post("/p2pserve/ledger/unstake", json={"amount": 1}, headers={"Origin": "https://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert node.ledger.staked() == 9 * MICRO
        # ... still JSON only, and another origin's preflight is refused
        cross = {"Origin": "https://app.example", "Content-Type": "text/plain"}
        error(await client.post("/p2pserve/ledger/unstake", content=b'{"amount": 1}', headers=cross), 415,
              "unsupported_media_type")
        error(await client.options("/v1/chat/completions", headers={
            "Origin": "https://other.example", "Access-Control-Request-Method": "POST"}), 403, "origin_not_allowed")
        assert node.ledger.staked() == 9 * MICRO


@pytest.mark.parametrize(
    ("bind", "allowed", "host", "ok"),
    [
        ("127.0.0.1:5778", (), "127.0.0.1:5778", True),
        ("127.0.0.1:5778", (), "localhost:5778", True),
        ("127.0.0.1:5778", (), "[::1]:5778", True),
        ("127.0.0.1:5778", (), "LocalHost:5778", True),
        ("127.0.0.1:5778", (), "localhost:5779", False),  # another port: another service's origin
        ("127.0.0.1:5778", (), "localhost", False),
        ("127.0.0.1:5778", (), "evil.example:5778", False),
        ("127.0.0.1:5778", (), None, False),
        ("127.0.0.1:80", (), "localhost", True),  # no port in Host: the scheme's default
        ("127.0.0.1:80", (), "localhost:80", True),
        ("192.168.1.5:5778", (), "192.168.1.5:5778", True),
        ("192.168.1.5:5778", (), "localhost:5778", True),
        ("[::1]:5778", (), "[::1]:5778", True),
        ("127.0.0.1:5778", ("node.example",), "node.example:443", True),  # a name without port: any port
        ("127.0.0.1:5778", ("node.example:8080",), "node.example:8080", True),
        ("127.0.0.1:5778", ("node.example:8080",), "node.example:8081", False),
        ("127.0.0.1:5778", ("*",), "evil.example:5778", True),
        ("0.0.0.0:5778", (), "evil.example:5778", True),  # wildcard bind, no list: any Host (documented)
        ("0.0.0.0:5778", (), "203.0.113.7:5778", True),
        ("0.0.0.0:5778", ("node.example",), "evil.example:5778", False),  # a list turns the check on
        ("0.0.0.0:5778", ("node.example",), "node.example", True),
        ("0.0.0.0:5778", ("node.example",), "localhost:5778", True),
        ("[::]:5778", (), "evil.example", True),
        ("127.0.0.1:0", (), "127.0.0.1:41000", True),  # port 0: the port the connection came in on
        ("127.0.0.1:0", (), "127.0.0.1:41001", False),
    ],
)
def test_host_policy(bind: str, allowed: tuple[str, ...], host: str | None, ok: bool) -> None:
    name, _, port = bind.rpartition(":")
    policy = HostPolicy(name, int(port), allowed_hosts=allowed)
    assert policy.host_allowed(None if host is None else host.encode(), 41000) is ok


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "own", "listed"),
    [
        ("http://127.0.0.1:5778", "127.0.0.1:5778", (), True, False),
        ("http://localhost:5778", "127.0.0.1:5778", (), True, False),
        ("http://evil.example", "127.0.0.1:5778", (), False, False),
        ("http://evil.example:5778", "evil.example:5778", (), True, False),  # rebinding: only Host stops it
        ("http://localhost:3000", "127.0.0.1:5778", (), False, False),  # another local web app
        ("null", "127.0.0.1:5778", (), False, False),
        ("chrome-extension://abc", "127.0.0.1:5778", ("chrome-extension://abc",), False, True),
        ("https://app.example", "127.0.0.1:5778", ("https://app.example:443/",), False, True),
        ("https://APP.example:443", "127.0.0.1:5778", ("https://app.example",), False, True),
        ("http://app.example", "127.0.0.1:5778", ("https://app.example",), False, False),
        ("http://anything", "127.0.0.1:5778", ("*",), False, True),
    ],
)
def test_origin_policy(origin: str, host: str, allowed: tuple[str, ...], own: bool, listed: bool) -> None:
    policy = HostPolicy("127.0.0.1", 5778, allowed_origins=allowed)
    assert policy.own_origin(origin, host.encode(), 5778) is own
    assert policy.listed_origin(origin) is listed


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"allowed_hosts": ["http://node.example"]}, r"server_params\.allowed_hosts: 'http://node.example'"),
        ({"allowed_hosts": ["node.example/x"]}, r"allowed_hosts: 'node.example/x': not a host"),
        ({"allowed_hosts": ["::1"]}, r"allowed_hosts: '::1': write an IPv6 address in brackets"),
        ({"allowed_hosts": ["node.example:99999"]}, r"allowed_hosts: 'node.example:99999': bad port"),
        ({"allowed_origins": ["app.example"]}, r"allowed_origins: 'app.example': expected scheme://host"),
        ({"allowed_origins": ["https://app.example/path"]}, r"allowed_origins: 'https://app.example/path'"),
    ],
)
def test_bad_allow_lists_are_config_errors(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config({"server_params": raw}, "f.yaml")


def test_good_allow_lists_load() -> None:
    sp = parse_config({"server_params": {"allowed_hosts": ["*", "node.example", "[::1]:8080", "10.0.0.2:5778"],
                                         "allowed_origins": ["*", "https://app.example", "http://localhost:3000"]}}).server_params
    assert sp.allowed_hosts[1] == "node.example" and sp.allowed_origins[2] == "http://localhost:3000"
    HostPolicy("0.0.0.0", 5778, allowed_hosts=sp.allowed_hosts, allowed_origins=sp.allowed_origins)


class _StakeOnly:
    """The part of a LedgerService the stake routes use, counting calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def unstake(self, amount: int) -> bytes:
        self.calls.append(("unstake", amount))
        return b"\x00" * 32

    async def stake(self, amount: int) -> bytes:
        self.calls.append(("stake", amount))
        return b"\x00" * 32



async def test_real_server_on_loopback_refuses_the_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypercorn on 127.0.0.1, port 0 (the guard learns the port from each connection)."""
    monkeypatch.setattr("p2pserve.api.ledger.ledger_summary", lambda ledger: {})  # the double has no account
    ledger = _StakeOnly()
    app = build_app(status=lambda: {"ok": True}, metrics=lambda: "", host="127.0.0.1", port=0,
                    extra_routes=list(ledger_routes(cast(LedgerService, ledger))))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_app, app, "127.0.0.1", 0)
            port = int(url.rsplit(":", 1)[1])
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.post("/p2pserve/ledger/unstake", content=b'{"amount": 5}',
                                      headers={**EVIL, "Host": f"evil.example:{port}"})
                error(r, 403, "host_not_allowed")
                r = await client.post("/p2pserve/ledger/unstake", content=b'{"amount": 5}',
                                      headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
                error(r, 403, "origin_not_allowed")
                assert ledger.calls == []
                assert (await client.get("/p2pserve/status")).json() == {"ok": True}
                r = await client.post("/p2pserve/ledger/unstake", json={"amount": 5})
                assert r.status_code == 200 and ledger.calls == [("unstake", 5 * MICRO)]
            nursery.cancel_scope.cancel()


async def test_the_admin_key_alone_moves_stake(autojump_clock: trio.testing.MockClock) -> None:
    """Issue 12: one API key covered inference and stake/unstake, so any user of a shared
    gateway could move its stake. With ``server_params.admin_key`` the inference key reads and
    asks, and only the admin key writes to the ledger."""
    cfg = parse_config({"server_params": {"api_key": "user", "admin_key": "owner"}, "ledger_params": {"initial_staked": 10},
                        "models": [{"model_path": MODEL, "backend": "fake"}]})
    async with open_cluster([cfg], network=MemoryNetwork(seed=4), seed=4,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as c:
        node = c[0]
        with trio.fail_after(30):
            while node.ledger.staked() == 0:
                await trio.sleep(0.1)
        app = build_app(status=node.status, metrics=node.metrics, extra_routes=node.api_routes(), api_key="user",
                        host="127.0.0.1", port=5778)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:5778") as client:
            user, owner = {"Authorization": "Bearer user"}, {"Authorization": "Bearer owner"}
            r = await client.post("/p2pserve/ledger/unstake", json={"amount": 1}, headers=user)
            assert r.status_code == 401 and node.ledger.staked() == 10 * MICRO
            assert (await client.get("/p2pserve/ledger", headers=user)).status_code == 200  # reads: the api key
            assert (await client.post("/v1/chat/completions", json=CHAT, headers=user)).status_code == 200
            assert (await client.post("/v1/chat/completions", json=CHAT, headers=owner)).status_code == 401
            r = await client.post("/p2pserve/ledger/unstake", json={"amount": 1}, headers=owner)
            assert r.status_code == 200, r.text
            assert node.ledger.staked() == 9 * MICRO
            r = await client.post("/p2pserve/ledger/unstake", json={"amount": 100}, headers=owner)
            assert error(r, 400, "insufficient-stake") == "cannot unstake 100 credits: 9 credits are staked"  # credits, not micro
