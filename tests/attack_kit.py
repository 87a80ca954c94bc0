"""What the network-attack tests share: a gateway and three fake-backend executors on the
memory transport, and a one-line request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import parse_config
from p2pserve.sim.cluster import Cluster, open_cluster
from transports.memory import MemoryNetwork

MODEL = "fake-model"
EXECUTOR = parse_config({"server_params": {"accept_frequency": 1.0},
                         "models": [{"model_path": MODEL, "backend": "fake", "dispatch_params": {"max_concurrency": 8}}]})
GATEWAY = parse_config({"models": []})


@asynccontextmanager
async def gateway_and_executors(net: MemoryNetwork, seed: int) -> AsyncIterator[Cluster]:
    """Node 0 a gateway (no model), nodes 1-3 executors of MODEL on the fake backend."""
    async with open_cluster([GATEWAY, EXECUTOR, EXECUTOR, EXECUTOR], network=net, seed=seed,
                            backends=lambda i: {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))} if i else {}) as c:
        yield c


async def ask(node: Any) -> str:
    """Ask ``node`` for a 5-token answer to "hi"; its text."""
    text = ""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with node.serve.submit("chat", MODEL, body) as events:
        async for ev in events:
            text += getattr(ev, "text", "")
    return text
