"""The operator's view of a node: ``/health``, ``/ready`` and the status page at ``/``.

In-process (virtual time): the page and its files are served with a strict CSP, without the
key but behind the host guard; readiness follows membership and backends, and shows its
reasons only with the key. With real processes: a 3-node network on 127.0.0.1 whose node 0
page, loaded in headless Chromium (the key passed in the URL fragment), renders both peers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
import trio.testing

from p2pserve.api.app import build_app
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.node import Node
from p2pserve.sim.cluster import Cluster, open_cluster
from p2pserve.testing.processes import read_banner, spawn_join, stop_processes, wait_for
from p2pserve.testing.stream_helpers import until
from transports.memory import MemoryNetwork

MODEL = "fake-model"
KEY = "page+key/1"  # "+" and "/": the page must decode its URL fragment, not read "+" as a space
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def cfg(**server: Any) -> Any:
    return parse_config({"server_params": {"accept_frequency": 1.0, **server}, "ledger_params": {"initial_staked": 10},
                         "models": [{"model_path": MODEL, "backend": "fake"}]})


@asynccontextmanager
async def two_nodes(**server: Any) -> AsyncIterator[Cluster]:
    async with open_cluster([cfg(**server), cfg(**server)], network=MemoryNetwork(seed=7), seed=7,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}) as c:
        await until(lambda: len(c[0].peers) == 1 and len(c[1].peers) == 1)
        yield c


def client(node: Node, api_key: str | None = None) -> httpx.AsyncClient:
    app = build_app(status=node.status, metrics=node.metrics, extra_routes=node.api_routes(), api_key=api_key,
                    host="127.0.0.1", port=5778)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:5778")


# --- in process ----------------------------------------------------------------------------


async def test_the_page_and_its_files(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes(api_key=KEY) as c, client(c[0], KEY) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert '<script src="/p2pserve/ui/status.js"></script>' in page.text and 'id="peers"' in page.text
        js = await http.get("/p2pserve/ui/status.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "/p2pserve/status" in js.text and "Bearer" in js.text and "innerHTML" not in js.text
        css = await http.get("/p2pserve/ui/status.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        # the page is public, its data is not; the host guard covers the page too
        assert (await http.get("/p2pserve/status")).status_code == 401
        assert (await http.get("/", headers={"Host": "evil.example:5778"})).status_code == 403
        # what the page draws: peers, and recent requests once there are some
        auth = {"Authorization": f"Bearer {KEY}"}
        assert (await http.post("/v1/chat/completions", json=CHAT, headers=auth)).status_code == 200
        st = (await http.get("/p2pserve/status", headers=auth)).json()
        assert [p["peer_id"] for p in st["peers"]] == [c[1].peer_id]
        (recent,) = st["recent_requests"]
        assert recent["model"] == MODEL and recent["outcome"] == "completed" and recent["where"] in ("local", "offloaded")
        assert st["models"][0]["up"] is True


async def test_health_and_readiness(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as c, client(c[0]) as first, client(c[1]) as second:
        for http in (first, second):
            r = await http.get("/health")
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            r = await http.get("/ready")
            assert r.status_code == 200 and r.json() == {"status": "ready", "reasons": []}
        # a backend marked down (by the serving layer's backend checks) makes the node unready
        c[1].serve.local.mark_down(MODEL, "connection refused")
        r = await second.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "not_ready"
        assert r.json()["reasons"] == [f"backend for model {MODEL!r} is down: connection refused"]
        assert (await second.get("/p2pserve/status")).json()["models"][0]["up"] is False
        c[1].serve.local.down.clear()
        # node 1 joined through node 0: alone again, it is not ready; node 0 (no bootstrap) still is
        c.kill(0)
        await until(lambda: len(c[1].peers) == 0)
        r = await second.get("/ready")
        assert r.status_code == 503 and r.json()["reasons"] == ["no peer known yet (bootstrapping from 1 address)"]
        assert (await second.get("/health")).status_code == 200


async def test_readiness_reasons_need_the_key(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes(api_key=KEY) as c, client(c[0], KEY) as http:
        assert (await http.get("/ready")).json() == {"status": "ready", "reasons": []}
        c[0].serve.local.mark_down(MODEL, "http://10.0.0.7:8000 unreachable")
        r = await http.get("/ready")
        assert r.status_code == 503 and "10.0.0.7" not in r.text and "API key" in r.json()["reasons"][0]
        r = await http.get("/ready", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 503 and "10.0.0.7" in r.json()["reasons"][0]


# --- real processes and a real browser -------------------------------------------------------

COMMON = "  status_interval: 0.5\n  peer_ttl: 2.0\n  accept_frequency: 1.0\n"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    wait_for(pred, timeout, what, poll=0.2, ignore=(httpx.HTTPError,))  # HTTPError: not listening yet


def _headless(browser: str, profile: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run (virtual time: the page's timers and fetches run to the
    budget, then it dumps or shoots). Root needs --no-sandbox (containers, CI)."""
    cmd = [browser, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.libp2p
@pytest.mark.processes
def test_status_page_in_a_real_browser(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} is on PATH (Debian: apt-get install chromium)")
    configs = [
        f"server_params:\n{COMMON}  api_key: \"{KEY}\"\nledger_params:\n  initial_staked: 10\nmodels: []\n",
        *(f"server_params:\n{COMMON}ledger_params:\n  initial_staked: {s}\nmodels:\n  - model_path: {MODEL}\n    backend: fake\n"
          for s in (20, 10)),
    ]
    procs: list[subprocess.Popen[str]] = []
    apis: list[str] = []
    ids: list[str] = []
    boot: list[str] = []
    try:
        for i, text in enumerate(configs):
            path = tmp_path / f"node{i}.yaml"
            path.write_text(text)
            procs.append(spawn_join(["--config", str(path), "--data-dir", str(tmp_path / f"data{i}"), "--listen",
                                     "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", *boot], stderr=subprocess.DEVNULL))
            banner = read_banner(procs[-1])
            apis.append(banner["api"][0])
            ids.append(banner["peer_id"][0])
            boot = boot or ["--bootstrap", banner["listening"][0]]
        gw, auth = apis[0], {"Authorization": f"Bearer {KEY}"}

        def joined() -> bool:
            ready = httpx.get(gw + "/ready", timeout=5).status_code == 200
            st = httpx.get(gw + "/p2pserve/status", headers=auth, timeout=5).json()
            return ready and sum(MODEL in p["models"] for p in st["peers"]) == 2 and st["ledger"]["writable"] \
                and st["offloading"]["possible"]

        _wait(joined, 60, "node 0 to be ready and see both executors")
        for i in range(3):
            r = httpx.post(gw + "/v1/chat/completions", headers=auth, timeout=30,
                           json={**CHAT, "messages": [{"role": "user", "content": f"question {i}"}]})
            assert r.status_code == 200, r.text

        page = f"{gw}/#key={quote(KEY, safe='')}"
        run = _headless(browser, tmp_path / "profile", "--dump-dom", page)
        dom = run.stdout
        assert run.returncode == 0 and "<html" in dom, run.stderr[-2000:]
        for peer in ids[1:]:
            assert f'data-peer-id="{peer}"' in dom and f">{peer[-12:]}<" in dom, dom[:4000]
        assert ">live<" in dom and "needs API key" not in dom
        assert dom.count(">completed<") == 3  # the recent requests, all offloaded to the two peers

        shot = tmp_path / "status_page.png"
        run = _headless(browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1080", page)
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", run.stderr[-2000:]
        keep = os.environ.get("P2PSERVE_STATUS_SCREENSHOT")  # e.g. docs/img/status_page.png
        if keep:
            shutil.copyfile(shot, keep)
    finally:
        stop_processes(procs)
