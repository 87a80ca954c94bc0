"""Test helpers for the serving path: signed statuses, peer entries, serving nodes.

Serving nodes run on the product's in-process transport (``transports.memory``): build a
``MemoryNetwork`` (latency 0 by default), start nodes with :func:`start_node`, connect and
introduce them with :func:`connect_all` (gossip would do both in a real node), make one
vanish with ``node.transport.kill()``.

The scripted backend (``ScriptedBackend`` and its steps ``Sleep``, ``Fail``, ``Hang``) ships
in :mod:`p2pserve.testing.scripted`; it is re-exported here for the tests that import it
from this module.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from p2pserve.backends.base import Backend, Kind, TextDelta
from p2pserve.clock import virtual_clock
from p2pserve.crypto import Signer
from p2pserve.errors import ServingError
from p2pserve.membership.table import PeerEntry, PeerTable
from p2pserve.policies import PolicyParams, load_policy
from p2pserve.serving.service import Deadlines, ServeService
from p2pserve.testing.scripted import Fail, Hang, ScriptedBackend, Sleep
from p2pserve.transport import PeerEvent, Stream, StreamHandler, Subscription, Validator
from p2pserve.wire.gossip import ModelStatus, Status
from p2pserve.wire.infer import Receipt
from transports.memory import MemoryNetwork, MemoryTransport

__all__ = [
    "NETWORK",
    "Fail",
    "Hang",
    "Node",
    "ScriptedBackend",
    "Sleep",
    "StreamCounter",
    "collect",
    "connect_all",
    "introduce",
    "make_entry",
    "make_status",
    "signer",
    "start_node",
    "start_transport",
    "text_of",
    "wall_clock",
]

NETWORK = "testnet"


def signer(i: int) -> Signer:
    """A deterministic key for test node ``i``."""
    return Signer(bytes([i % 256]) * 31 + bytes([(i // 256) % 256]))


def make_status(
    s: Signer,
    models: Sequence[str | ModelStatus] = ("m",),
    *,
    stake: int = 1_000_000,
    seq: int = 1,
    accepting: bool = True,
    network_id: str = NETWORK,
    price_per_1k: int = 1000,
) -> Status:
    """A signed status for ``s`` serving ``models`` (names become accepting idle models)."""
    ms = tuple(
        m if isinstance(m, ModelStatus) else ModelStatus(m, 4096, price_per_1k, 0, 0, 0.0, True) for m in models
    )
    return Status(network_id, s.peer_id, seq, 0, (), ms, accepting, 0, 0, stake, b"", 2000, False, b"", b"").signed(s)


def make_entry(s: Signer, stake: int, *, models: Sequence[str] = ("m",)) -> PeerEntry:
    return PeerEntry(make_status(s, models, stake=stake), 0.0)


# --- serving nodes on the memory transport --------------------------------------------------

WALL0 = 1_700_000_000.0


def wall_clock() -> float:
    """A wall clock that follows trio's (virtual) clock."""
    return WALL0 + trio.current_time()


class StreamCounter:
    """A node's :class:`MemoryTransport` as its ServeService sees it, counting the streams
    the service opens (tests assert that offers reuse pooled session streams). Every call
    goes to the memory transport unchanged."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.opened = 0

    @property
    def peer_id(self) -> str:
        return self.inner.peer_id

    def listen_addrs(self) -> list[str]:
        return self.inner.listen_addrs()

    async def connect(self, addr: str) -> str:
        return await self.inner.connect(addr)

    def connected_peers(self) -> set[str]:
        return self.inner.connected_peers()

    def peer_events(self) -> AsyncIterator[PeerEvent]:
        return self.inner.peer_events()

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        self.inner.set_handler(protocol, handler)

    async def open_stream(self, peer_id: str, protocol: str) -> Stream:
        stream = await self.inner.open_stream(peer_id, protocol)
        self.opened += 1
        return stream

    async def publish(self, topic: str, data: bytes) -> None:
        await self.inner.publish(topic, data)

    async def subscribe(self, topic: str, validator: Validator | None = None) -> Subscription:
        return await self.inner.subscribe(topic, validator)


async def _host(
    net: MemoryNetwork, s: Signer, *, task_status: trio.TaskStatus[MemoryTransport] = trio.TASK_STATUS_IGNORED
) -> None:
    async with net.open_transport(s) as t:
        task_status.started(t)
        await trio.sleep_forever()


async def start_transport(nursery: trio.Nursery, net: MemoryNetwork, i: int) -> MemoryTransport:
    """A bare transport for test node ``i`` (no ServeService), running in ``nursery``.

    Leaving ``nursery`` (or :meth:`MemoryTransport.kill`) makes it vanish."""
    t: MemoryTransport = await nursery.start(_host, net, signer(i))
    return t


async def connect_all(node: Node, others: Sequence[Node], *, stake: int = 1_000_000, seq: int = 1) -> None:
    """Connect ``node`` to each of ``others`` and introduce them (see :func:`introduce`)."""
    for o in others:
        await node.transport.connect(o.transport.listen_addrs()[0])
    introduce(node, others, stake=stake, seq=seq)


@dataclass
class Node:
    """A test node: its key, its memory transport, its ServeService, the receipts it got."""

    signer: Signer
    transport: MemoryTransport
    serve: ServeService
    counter: StreamCounter
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def streams_opened(self) -> int:
        """Streams this node's ServeService opened (to offer requests to peers)."""
        return self.counter.opened


async def start_node(
    nursery: trio.Nursery,
    net: MemoryNetwork,
    i: int,
    backends: Mapping[str, Backend] | None = None,
    *,
    policy: str = "default",
    params: PolicyParams | None = None,
    prices: Mapping[str, int] | None = None,
    deadlines: Deadlines | None = None,
    seed: int | None = None,
    **serve_kw: Any,
) -> Node:
    """A started ServeService for test node ``i`` on ``net`` (the one place that builds a
    ServeService). Its peer table starts empty and it is connected to nobody: see
    :func:`connect_all`."""
    s = signer(i)
    t = await start_transport(nursery, net, i)
    counter = StreamCounter(t)
    p = params or PolicyParams(accept_frequency=1.0)
    receipts: list[Receipt] = []

    async def on_receipt(r: Receipt) -> None:
        receipts.append(r)

    serve = ServeService(
        counter,
        s,
        NETWORK,
        PeerTable(s.peer_id, NETWORK, ttl=1e9),
        backends or {},
        load_policy(policy, p),
        p,
        random.Random(i if seed is None else seed),
        prices=prices or {m: 1000 for m in (backends or {})},
        deadlines=deadlines or Deadlines(),
        on_receipt=on_receipt,
        clock=virtual_clock(WALL0),
        **serve_kw,
    )
    await nursery.start(serve.run)
    return Node(s, t, serve, counter, receipts)


def introduce(node: Node, others: Sequence[Node], *, stake: int = 1_000_000, seq: int = 1) -> None:
    """Give ``node`` a signed status of each of ``others`` (what gossip would have done)."""
    for o in others:
        models = o.serve.model_status() or ()
        status = Status(
            NETWORK, o.signer.peer_id, seq, 0, (), tuple(replace(m, accepting=True) for m in models),
            True, 0, 0, stake, b"", 2000, False, b"", b"",
        ).signed(o.signer)
        node.serve.peers.update(status, trio.current_time())


async def collect(serve: ServeService, model: str = "m", body: dict[str, Any] | None = None, kind: Kind = "chat") -> tuple[list[Any], ServingError | None]:
    """Every event of one request, and the ServingError it ended with (if any)."""
    events: list[Any] = []
    try:
        async with serve.submit(kind, model, body or {"messages": [{"role": "user", "content": "hi"}]}) as chan:
            async for ev in chan:
                events.append(ev)
    except ServingError as exc:
        return events, exc
    return events, None


def text_of(events: Sequence[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))
