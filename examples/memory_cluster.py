"""Six real p2pserve nodes in one process on the in-memory transport, in virtual time.

    .venv/bin/python examples/memory_cluster.py [--requests 30] [--seed 1]

Node 0 is a gateway (no model) that offloads every request; nodes 1-5 serve a fake model
and have different stakes. The script prints who executed what, showing Proof-of-Stake
routing, and the ledger balances after payments. Same seed, same output.
"""

from __future__ import annotations

import argparse
import collections

import trio
import trio.testing

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.ledger.rules import fingerprint
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

MODEL = "fake-model"


def configs() -> list:
    gateway = parse_config({"models": [], "server_params": {"policy": "always-offload"}})
    servers = [
        parse_config({
            "server_params": {"accept_frequency": 1.0},
            "ledger_params": {"initial_staked": stake},
            "models": [{"model_path": MODEL, "backend": "fake", "dispatch_params": {"max_concurrency": 64}}],
        })
        for stake in (50, 200, 100, 400, 250)
    ]
    return [gateway, *servers]


async def main(requests: int, seed: int) -> None:
    def backends(i: int) -> dict:
        return {} if i == 0 else {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}

    async with open_cluster(configs(), network=MemoryNetwork(seed=seed, default_latency=0.01), backends=backends, seed=seed) as cluster:
        gateway = cluster[0]
        while not (len(gateway.peers.candidates(MODEL)) == 5 and gateway.ledger.free() > 0
                   and all(n.ledger.staked() > 0 for n in cluster.nodes[1:])):
            await trio.sleep(0.1)
        await trio.sleep(5)  # let the stakes be gossiped
        counts: collections.Counter[str] = collections.Counter()
        for i in range(requests):
            async with gateway.serve.submit("chat", MODEL, {"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 8}) as events:
                async for ev in events:
                    if type(ev).__name__ == "Completed":
                        counts[ev.executor] += 1
        await trio.sleep(5)  # claims
        print(f"{'node':>5} {'stake':>7} {'executed':>9} {'free credit':>12}")
        for i, n in enumerate(cluster.nodes):
            print(f"{i:>5} {n.ledger.staked() / 1e6:>7.0f} {counts[n.peer_id]:>9} {n.ledger.free() / 1e6:>12.3f}")
        prints = {fingerprint(n.ledger.store.state).hex()[:16] for n in cluster.nodes}
        print(f"ledger fingerprints agree: {len(prints) == 1} ({prints.pop()})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args()
    trio.run(main, opts.requests, opts.seed, clock=trio.testing.MockClock(autojump_threshold=0))
