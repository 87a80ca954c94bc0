"""Three in-process nodes on real libp2p (127.0.0.1) with fake backends and real HTTP APIs;
node 0's policy forces offloading. Shared by the serving and ledger libp2p tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from p2pserve.api.app import build_app, serve_app
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import NodeConfig, parse_config
from p2pserve.crypto import Signer, sha256
from p2pserve.ledger.store import LedgerStore
from p2pserve.node import Node
from transports.libp2p import open_libp2p_transport

MODEL = "fake-model"


def config(i: int, bootstrap: tuple[str, ...]) -> NodeConfig:
    sp: dict[str, object] = {"status_interval": 0.5, "peer_ttl": 2.0, "accept_frequency": 1.0, "bootstrap": list(bootstrap),
                             "listen": ["/ip4/127.0.0.1/tcp/0"], "api": "127.0.0.1:0"}
    if i == 0:
        sp.update(policy="always-offload", offload_frequency=1.0)
    return parse_config({"server_params": sp, "models": [{"model_path": MODEL, "backend": "fake",
                                                          "dispatch_params": {"max_concurrency": 8}}]})


async def wait_ready(nodes: Sequence[Node]) -> None:
    """Until every node knows the others' models and has opened its ledger account."""
    while not all(len(n.peers) == len(nodes) - 1 and all(e.status.models for e in n.peers.entries()) and n.ledger.free() > 0
                  for n in nodes):
        await trio.sleep(0.05)


@asynccontextmanager
async def three_nodes(stores: Sequence[LedgerStore] | None = None) -> AsyncIterator[tuple[list[Node], list[str]]]:
    """Nodes 0..2 (node 0 the bootstrap, and always offloading); yields them and their API URLs.
    ``stores`` gives each node its ledger store (default: in memory)."""
    nodes: list[Node] = []
    urls: list[str] = []
    stop = trio.Event()

    async def run(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        signer = Signer(sha256(f"serving-libp2p-{i}".encode()))
        boot = tuple(nodes[0].transport.listen_addrs()) if nodes else ()
        cfg = config(i, boot)
        async with open_libp2p_transport(signer, ["/ip4/127.0.0.1/tcp/0"]) as transport:
            node = Node(cfg, signer, transport, backends={MODEL: build_backend(BackendSpec(MODEL, kind="fake"))},
                        ledger_store=stores[i] if stores else None, seed=i)
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
            yield nodes, urls
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 10


