"""A concurrent serving scenario whose result must not depend on anything but its seed.

6 nodes on the memory transport (one gateway, five executors on the fake backend: accept
frequency 0.6, four slots, some faults), 40 concurrent requests at the gateway (rejections,
fail-overs and failures included), then the ledgers settle. Prints one JSON line: per
request its outcome, executor and answer hash, and every node's ledger fingerprint. Run by
tests/test_determinism.py in separate processes (``python -m tests.determinism_scenario SEED``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import trio

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.errors import ServingError
from p2pserve.ledger.state import fingerprint
from p2pserve.serving.events import Completed
from p2pserve.sim.cluster import open_cluster
from p2pserve.sim.virtual import run_virtual
from transports.memory import MemoryNetwork

MODEL = "fake-model"


def config(i: int) -> Any:
    if i == 0:
        return parse_config({"models": [], "server_params": {"max_wait_s": 10.0}})
    return parse_config({
        "server_params": {"accept_frequency": 0.6},
        "ledger_params": {"initial_staked": 10 * i},
        "models": [{"model_path": MODEL, "backend": "fake", "dispatch_params": {"max_concurrency": 4},
                    "price_per_1k": 1.0}],
    })


def backends(i: int) -> dict[str, Any]:
    if i == 0:
        return {}
    fake = {"max_running": 4, "ttft_s": 0.05 * i, "tpot_s": 0.01, "fault_rate": 0.3, "fault_seed": i,
            "faults": ("http500", "cut")}
    return {MODEL: build_backend(BackendSpec(MODEL, kind="fake", fake=fake, max_concurrency=4))}


async def scenario(seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    net = MemoryNetwork(seed=seed, default_latency=0.005, default_jitter=0.002)
    async with open_cluster([config(i) for i in range(6)], network=net, seed=seed, backends=backends) as c:
        gw = c[0]
        with trio.fail_after(120):
            while len(gw.peers.candidates(MODEL)) < 5 or not gw.ledger.writable:
                await trio.sleep(0.1)

        async def one(i: int) -> None:
            key = f"q{i}"
            body = {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8 + i % 5}
            text, executor, outcome = "", None, "ok"
            try:
                async with gw.serve.submit("chat", MODEL, body, key=key) as events:
                    async for ev in events:
                        text += getattr(ev, "text", "")
                        if isinstance(ev, Completed):
                            executor = ev.executor
            except ServingError as exc:
                outcome = type(exc).__name__
            results[key] = [outcome, executor, hashlib.sha256(text.encode()).hexdigest()[:12]]

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        await gw.ledger.flush()
        await trio.sleep(10)  # claims and gossip settle
        prints = {n.peer_id[-8:]: fingerprint(n.ledger.store.state).hex()[:16] for n in c.alive()}
        counters = {n.peer_id[-8:]: [n.serve.counters.served_for_peers, n.serve.counters.offers_rejected] for n in c.alive()}
    return {"requests": dict(sorted(results.items())), "fingerprints": prints, "counters": counters}


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    print(json.dumps(run_virtual(lambda: scenario(seed), seed=seed), sort_keys=True))


if __name__ == "__main__":
    main()
