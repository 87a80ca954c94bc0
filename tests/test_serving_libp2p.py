"""Three nodes on real libp2p (127.0.0.1), each with a fake backend; node 0's policy forces
offloading. Requests sent to node 0's real HTTP API are executed by its peers: receipts
verify, streaming works end to end, and every node's status shows the remote executions."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from p2pserve.crypto import sha256
from p2pserve.wire.codec import decode
from p2pserve.wire.infer import Receipt
from tests.libp2p_harness import MODEL, three_nodes, wait_ready

pytestmark = pytest.mark.libp2p

async def test_forced_offloading_over_libp2p() -> None:
    with trio.fail_after(60):
        async with three_nodes() as (nodes, urls):
            api = urls[0]
            ids = {n.peer_id for n in nodes}
            await wait_ready(nodes)
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
