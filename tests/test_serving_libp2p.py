"""Three nodes on real libp2p (127.0.0.1), each with a fake backend; node 0's policy forces
offloading. Requests sent to node 0's real HTTP API are executed by its peers: receipts
verify, streaming works end to end, and every node's status shows the remote executions."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from p2pserve.api import build_app, serve_app
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.crypto import Signer, sha256
from p2pserve.node import Node
from p2pserve.wire.codec import decode
from p2pserve.wire.messages import Receipt
from transports.libp2p import open_libp2p_transport

pytestmark = pytest.mark.libp2p

MODEL = "fake-model"


def config(i: int, bootstrap: tuple[str, ...]) -> object:
    sp: dict[str, object] = {"status_interval": 0.5, "peer_ttl": 2.0, "accept_frequency": 1.0, "bootstrap": list(bootstrap),
                             "listen": ["/ip4/127.0.0.1/tcp/0"], "api": "127.0.0.1:0"}
    if i == 0:
        sp.update(policy="always-offload", offload_frequency=1.0)
    return parse_config({"server_params": sp, "models": [{"model_path": MODEL, "backend": "fake",
                                                          "dispatch_params": {"max_concurrency": 8}}]})


@asynccontextmanager
async def three_nodes() -> AsyncIterator[tuple[list[Node], str]]:
    nodes: list[Node] = []
    urls: list[str] = []
    stop = trio.Event()

    async def run(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        signer = Signer(sha256(f"serving-libp2p-{i}".encode()))
        boot = tuple(nodes[0].transport.listen_addrs()) if nodes else ()
        cfg = config(i, boot)
        async with open_libp2p_transport(signer, ["/ip4/127.0.0.1/tcp/0"]) as transport:
            node = Node(cfg, signer, transport, backends={MODEL: build_backend(BackendSpec(MODEL, kind="fake"))},  # type: ignore[arg-type]
                        rng=random.Random(i))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                app = build_app(status=node.status, metrics=node.metrics, extra_routes=node.api_routes())
                urls.append(await nursery.start(serve_app, app, "127.0.0.1", 0))
                nodes.append(node)
                task_status.started()
                await stop.wait()
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for i in range(3):
            await nursery.start(run, i)
        try:
            yield nodes, urls[0]
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 10


async def test_forced_offloading_over_libp2p() -> None:
    with trio.fail_after(60):
        async with three_nodes() as (nodes, api):
            ids = {n.peer_id for n in nodes}
            while not all(len(n.peers) == 2 and all(e.status.models for e in n.peers.entries()) for n in nodes):
                await trio.sleep(0.05)
            async with httpx.AsyncClient(base_url=api, timeout=20) as client:
                executors = set()
                for i in range(6):
                    r = await client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 12,
                                                                          "messages": [{"role": "user", "content": f"hello {i}"}]})
                    assert r.status_code == 200, r.text
                    data = r.json()
                    executor = data["p2pserve"]["executor"]
                    assert executor == r.headers["x-p2pserve-executor"]
                    assert executor in ids - {nodes[0].peer_id}, "node 0 must not execute its own requests"
                    receipt = decode(bytes.fromhex(data["p2pserve"]["receipt"]), Receipt)
                    receipt.verify()
                    assert receipt.executor == executor and receipt.requester == nodes[0].peer_id
                    assert receipt.response_hash == sha256(data["choices"][0]["message"]["content"].encode())
                    assert receipt.completion_tokens == data["usage"]["completion_tokens"]
                    executors.add(executor)

                # streaming, end to end through the OpenAI SSE shape
                async with client.stream("POST", "/v1/chat/completions", json={
                        "model": MODEL, "max_tokens": 12, "stream": True,
                        "messages": [{"role": "user", "content": "stream please"}]}) as r:
                    assert r.status_code == 200
                    assert r.headers["x-p2pserve-executor"] in ids - {nodes[0].peer_id}
                    events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
                assert events[-1] == "[DONE]"
                chunks = [json.loads(e) for e in events[:-1]]
                assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
                text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
                assert text.strip()
                assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")

                status = (await client.get("/p2pserve/status")).json()
            assert status["served"]["offloaded"] == 7 and status["served"]["local"] == 0
            served = sum(n.serve.counters.served_for_peers for n in nodes[1:])
            assert served == 7
