"""A cluster of real :class:`~p2pserve.node.Node` s on one :class:`~transports.memory.MemoryNetwork`.

Used by the tests and the simulator: the node code is the product's, only the transport is
in-process. Node 0 starts first; every other node gets node 0's address as its only
bootstrap, as a provider running ``p2pserve join --bootstrap`` would. Each node runs in its
own task (its transport is entered and left there), so :meth:`Cluster.kill` makes one node
vanish abruptly while the others go on.

Identities are derived from ``seed`` and the node index, wall clocks are virtual
(``epoch + trio.current_time()``), and every RNG is seeded: the same seed gives the same run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from p2pserve.backends.base import Backend
from p2pserve.clock import virtual_clock
from p2pserve.config import NodeConfig
from p2pserve.crypto import Signer, sha256
from p2pserve.ledger.store import LedgerStore
from p2pserve.node import Node
from p2pserve.rng import derive
from transports.memory import MemoryNetwork

__all__ = ["Cluster", "open_cluster", "signer_for"]



def signer_for(seed: int, index: int) -> Signer:
    """The deterministic identity of node ``index`` in a cluster seeded with ``seed``."""
    return Signer(sha256(f"p2pserve-sim/{seed}/{index}".encode()))


class Cluster:
    """Running nodes, addressable by index."""

    def __init__(
        self, network: MemoryNetwork, nursery: trio.Nursery, seed: int, prepare: Callable[[Node, int], None] | None = None
    ) -> None:
        """``prepare(node, index)`` runs on each node after it is built and before it runs
        (the simulator sets its strategy there)."""
        self.network = network
        self.seed = seed
        self.prepare = prepare
        self.nodes: list[Node] = []
        self._scopes: list[trio.CancelScope] = []
        self._configs: list[NodeConfig] = []
        self._ended: list[trio.Event] = []
        self._nursery = nursery

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def alive(self) -> list[Node]:
        return [n for n, s in zip(self.nodes, self._scopes, strict=True) if not s.cancel_called]

    async def add(
        self, config: NodeConfig, backends: dict[str, Backend] | None = None, *, ledger_store: LedgerStore | None = None
    ) -> Node:
        """Start one more node (bootstrapping from node 0 if it exists); return it once running.
        ``ledger_store`` is its ledger (default: in memory)."""
        index = len(self.nodes)
        self.nodes.append(None)  # type: ignore[arg-type]  # filled in by _run_node
        self._scopes.append(trio.CancelScope())
        self._configs.append(config)
        self._ended.append(trio.Event())
        return await self._start(index, config, backends, ledger_store)

    async def restart(
        self, i: int, backends: dict[str, Backend] | None = None, *, ledger_store: LedgerStore | None = None
    ) -> Node:
        """Start node ``i`` again (after :meth:`kill`) with the same identity and config."""
        if not self._scopes[i].cancel_called:
            raise RuntimeError(f"node {i} is still running")
        await self._ended[i].wait()  # the old node has left the network
        self._scopes[i] = trio.CancelScope()
        self._ended[i] = trio.Event()
        return await self._start(i, self._configs[i], backends, ledger_store)

    async def _start(
        self, index: int, config: NodeConfig, backends: dict[str, Backend] | None, ledger_store: LedgerStore | None
    ) -> Node:
        signer = signer_for(self.seed, index)
        if index and not config.server_params.bootstrap:
            boot = tuple(self.nodes[0].transport.listen_addrs())
            config = dataclasses.replace(config, server_params=dataclasses.replace(config.server_params, bootstrap=boot))
        node: Node = await self._nursery.start(self._run_node, config, signer, index, (backends, ledger_store))
        return node

    async def _run_node(
        self,
        config: NodeConfig,
        signer: Signer,
        index: int,
        parts: tuple[dict[str, Backend] | None, LedgerStore | None],
        *,
        task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self._serve_node(config, signer, parts[0], index, parts[1], task_status)
        finally:
            self._ended[index].set()

    async def _serve_node(
        self,
        config: NodeConfig,
        signer: Signer,
        backends: dict[str, Backend] | None,
        index: int,
        ledger_store: LedgerStore | None,
        task_status: trio.TaskStatus[Node],
    ) -> None:
        with self._scopes[index]:
            async with self.network.open_transport(signer) as transport:
                node = Node(
                    config,
                    signer,
                    transport,
                    backends=backends if backends is not None else {},
                    ledger_store=ledger_store,
                    seed=derive(self.seed, "node", index).getrandbits(64),
                    clock=virtual_clock(),
                )
                self.nodes[index] = node
                if self.prepare is not None:
                    self.prepare(node, index)
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    task_status.started(node)

    def kill(self, i: int) -> None:
        """Node ``i`` vanishes at once (its transport is torn down; peers see it gone)."""
        self._scopes[i].cancel()

    def stop(self) -> None:
        for s in self._scopes:
            s.cancel()


@asynccontextmanager
async def open_cluster(
    configs: Sequence[NodeConfig],
    *,
    network: MemoryNetwork | None = None,
    backends: Callable[[int], dict[str, Backend]] | None = None,
    seed: int = 0,
    prepare: Callable[[Node, int], None] | None = None,
) -> AsyncIterator[Cluster]:
    """Start one node per config (node 0 first, the rest bootstrapping from it)."""
    network = network or MemoryNetwork(seed=seed)
    async with trio.open_nursery() as nursery:
        cluster = Cluster(network, nursery, seed, prepare)
        for i, cfg in enumerate(configs):
            await cluster.add(cfg, backends(i) if backends else None)
        try:
            yield cluster
        finally:
            cluster.stop()
