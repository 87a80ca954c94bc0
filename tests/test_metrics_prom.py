"""``/metrics`` through the real app on a running in-process cluster, parsed by the reference
parser (``prometheus_client.parser``): HELP and TYPE for every family, histograms of latency
and time to first token, requests by outcome and where they ran, credit in credits, a model
name with a quote and a backslash that survives the scrape, one registry per node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from p2pserve.api.app import build_app
from p2pserve.api.metrics import NodeMetrics
from p2pserve.api.openai import RequestRecord
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.node import Node
from p2pserve.sim.cluster import Cluster, open_cluster
from p2pserve.testing.stream_helpers import until
from transports.memory import MemoryNetwork

WEIRD = 'we"ird\\model'  # a quote and a backslash: both must be escaped in label values
REMOTE = "fake-model"


def cfg(model: str) -> Any:
    return parse_config({"server_params": {"accept_frequency": 1.0}, "ledger_params": {"initial_staked": 10},
                         "models": [{"model_path": model, "backend": "fake"}]})


def backend(model: str) -> dict[str, Any]:
    return {model: build_backend(BackendSpec(model, kind="fake"))}


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    """Node 0 serves WEIRD itself, node 1 serves REMOTE (so node 0 offloads REMOTE to it)."""
    async with open_cluster([cfg(WEIRD), cfg(REMOTE)], network=MemoryNetwork(seed=5), seed=5,
                            backends=lambda i: backend(WEIRD if i == 0 else REMOTE)) as c:
        await until(lambda: bool(c[0].peers.candidates(REMOTE)) and c[0].ledger.writable and c[1].ledger.writable
                    and c[0].ledger.store.state.account(c[1].peer_id) is not None
                    and c[1].ledger.store.state.account(c[0].peer_id) is not None)
        yield c


def client(node: Node) -> httpx.AsyncClient:
    app = build_app(status=node.status, metrics=node.metrics, extra_routes=node.api_routes(), host="127.0.0.1", port=5778)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:5778")


async def scrape(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(families: dict[str, Any], family: str, name: str | None = None, **labels: str) -> list[Sample]:
    return [s for s in families[family].samples
            if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    (s,) = samples(families, family, name, **labels)
    return float(s.value)


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}


async def test_a_scrape_after_real_requests(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster() as c, client(c[0]) as http, client(c[1]) as http1:
        for body in (chat(WEIRD), chat(WEIRD, stream=True), chat(REMOTE)):
            r = await http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
        assert (await http.post("/v1/chat/completions", json=chat("no-such-model"))).status_code == 404
        assert (await http.post("/v1/chat/completions", json={"model": WEIRD})).status_code == 400

        raw = (await http.get("/metrics")).text
        assert 'model="we\\"ird\\\\model"' in raw  # escaped by the library, not by hand
        fams = await scrape(http)
        ours = [f for name, f in fams.items() if name.startswith("p2pserve_")]
        assert len(ours) > 25 and all(f.documentation and f.type != "unknown" for f in ours)

        # histograms: local (with the odd model name) and offloaded
        for family in ("p2pserve_request_duration_seconds", "p2pserve_time_to_first_token_seconds"):
            assert fams[family].type == "histogram"
            assert value(fams, family, f"{family}_count", model=WEIRD, where="local") == 2
            assert value(fams, family, f"{family}_count", model=REMOTE, where="offloaded") == 1
            assert value(fams, family, f"{family}_bucket", model=WEIRD, where="local", le="+Inf") == 2
            assert len(samples(fams, family, f"{family}_bucket", model=WEIRD, where="local")) > 10
        assert value(fams, "p2pserve_tokens", "p2pserve_tokens_total", model=WEIRD, where="local", direction="out") > 0
        assert value(fams, "p2pserve_tokens", "p2pserve_tokens_total", model=REMOTE, where="offloaded", direction="in") > 0

        # requests by outcome and where they ran; refusals add no model series
        req = lambda **kw: value(fams, "p2pserve_requests", "p2pserve_requests_total", **kw)  # noqa: E731
        assert req(outcome="completed", where="local") == 2
        assert req(outcome="completed", where="offloaded") == 1
        assert req(outcome="model_not_found", where="none") == 1
        assert req(outcome="invalid_request_error", where="none") == 1
        assert not samples(fams, "p2pserve_request_duration_seconds", model="no-such-model")

        # gauges in credits; identity; process metrics from the library's collectors
        assert value(fams, "p2pserve_ledger_staked_credits") == 10.0
        assert value(fams, "p2pserve_peers") == 1
        assert value(fams, "p2pserve_model_running", model=WEIRD) == 0
        assert value(fams, "p2pserve_model_up", model=WEIRD) == 1
        own = c[0].ledger.store.state.account(c[0].peer_id)
        assert own is not None and value(fams, "p2pserve_ledger_height") == own.height >= 0
        (info,) = fams["p2pserve_node_info"].samples
        assert info.labels["peer_id"] == c[0].peer_id
        assert "process_cpu_seconds" in fams and "python_info" in fams

        # the executor's side: a peer's request, and (once paid and claimed) credit earned
        fams1 = await scrape(http1)
        assert value(fams1, "p2pserve_requests", "p2pserve_requests_total", outcome="completed", where="peer") == 1
        assert value(fams1, "p2pserve_offers", "p2pserve_offers_total", result="completed") == 1
        assert fams1["p2pserve_node_info"].samples[0].labels["peer_id"] == c[1].peer_id  # its own registry
        await until(lambda: c[1].ledger.claimed > 0, timeout=120)
        fams1 = await scrape(http1)
        assert 0 < value(fams1, "p2pserve_ledger_earned_credits") < 1  # a few tokens at 1 credit per 1k
        assert value(fams1, "p2pserve_ledger_claims", "p2pserve_ledger_claims_total") >= 1


async def test_cancelled_and_failed_requests_are_counted(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster() as c:
        m = c[0].telemetry
        base = m.outcomes.copy()
        m.observe(RequestRecord("chat", WEIRD, False, "cancelled", "local", c[0].peer_id, 0, 1.5, 0.2))
        m.observe(RequestRecord("chat", REMOTE, True, "no_capacity", "none", None, 0, 3.0, None))
        fams = {f.name: f for f in text_string_to_metric_families(c[0].metrics())}
        assert value(fams, "p2pserve_requests", "p2pserve_requests_total", outcome="cancelled", where="local") == \
            base[("cancelled", "local")] + 1
        assert value(fams, "p2pserve_requests", "p2pserve_requests_total", outcome="no_capacity", where="none") == 1
        # a cancelled request that got text counts for TTFT, not for duration
        ttft = "p2pserve_time_to_first_token_seconds"
        assert value(fams, ttft, f"{ttft}_count", model=WEIRD, where="local") == 1
        assert not samples(fams, "p2pserve_request_duration_seconds", model=WEIRD)
        assert [r["outcome"] for r in c[0].status()["recent_requests"]] == ["no_capacity", "cancelled"]


async def test_nodes_in_one_process_keep_separate_registries(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster() as c:
        a, b = NodeMetrics(c[0], process=False), NodeMetrics(c[1], process=False)
        a.observe(RequestRecord("chat", WEIRD, False, "completed", "local", c[0].peer_id, 0, 0.5, 0.1, 3, 4))
        fa = {f.name: f for f in text_string_to_metric_families(a.render())}
        fb = {f.name: f for f in text_string_to_metric_families(b.render())}
        assert value(fa, "p2pserve_request_duration_seconds", "p2pserve_request_duration_seconds_count",
                     model=WEIRD, where="local") == 1
        assert not samples(fb, "p2pserve_request_duration_seconds")
        assert "process_cpu_seconds" not in fa


async def test_a_backend_marked_down_shows(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster() as c:
        c[0].serve.local.mark_down(WEIRD, "connection refused")
        fams = {f.name: f for f in text_string_to_metric_families(c[0].metrics())}
        assert value(fams, "p2pserve_model_up", model=WEIRD) == 0
        assert value(fams, "p2pserve_model_accepting", model=WEIRD) == 0
