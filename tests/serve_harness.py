"""Test helpers for the serving path: signed statuses, peer entries, serving nodes.

The scripted backend (``ScriptedBackend`` and its steps ``Sleep``, ``Fail``, ``Hang``) ships
in :mod:`p2pserve.testing.scripted`; it is re-exported here for the tests that import it
from this module.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from p2pserve.backends.base import Backend, Kind, TextDelta
from p2pserve.clock import virtual_clock
from p2pserve.crypto import Signer
from p2pserve.errors import ConnectionBroken, DialError, P2PServeError, ServingError, StreamClosed
from p2pserve.membership.table import PeerEntry, PeerTable
from p2pserve.policies import PolicyParams, load_policy
from p2pserve.serving.service import Deadlines, ServeService
from p2pserve.testing.scripted import Fail, Hang, ScriptedBackend, Sleep
from p2pserve.transport import StreamHandler
from p2pserve.wire.messages import ModelStatus, Receipt, Status
from transports.memory import MemoryNetwork

__all__ = [
    "Fail",
    "Hang",
    "MiniNet",
    "MiniTransport",
    "Node",
    "ScriptedBackend",
    "Sleep",
    "collect",
    "connect_all",
    "introduce",
    "make_entry",
    "make_status",
    "signer",
    "start_node",
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
    return Status(network_id, s.peer_id, seq, 0, (), ms, accepting, 0, 0, stake, b"", 2000, b"").signed(s)


def make_entry(s: Signer, stake: int, *, models: Sequence[str] = ("m",)) -> PeerEntry:
    return PeerEntry(make_status(s, models, stake=stake), 0.0)


# --- a minimal in-process transport (streams only) -----------------------------------------


class _MiniStream:
    """One end of an in-process stream pair with the transport contract's error mapping."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, remote_peer: str) -> None:
        self._inner = inner
        self._remote = remote_peer
        self._closed = False

    @property
    def remote_peer(self) -> str:
        return self._remote

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise StreamClosed("stream closed")
        try:
            await self._inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionBroken(f"peer {self._remote} gone") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise StreamClosed("stream closed")
        try:
            return await self._inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionBroken(f"peer {self._remote} gone") from exc

    async def send_eof(self) -> None:
        try:
            await self._inner.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionBroken(f"peer {self._remote} gone") from exc

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._inner.aclose()


class MiniNet:
    """In-process network of :class:`MiniTransport` s; handlers run in ``nursery``."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.nodes: dict[str, MiniTransport] = {}

    def add(self, s: Signer) -> MiniTransport:
        t = MiniTransport(self, s.peer_id)
        self.nodes[s.peer_id] = t
        return t


class MiniTransport:
    """Streams only (no pubsub): enough for the infer protocol. ``kill()`` makes it vanish."""

    def __init__(self, net: MiniNet, peer_id: str) -> None:
        self.net = net
        self._peer_id = peer_id
        self.handlers: dict[str, StreamHandler] = {}
        self.dead = False
        self._streams: list[_MiniStream] = []
        self._scopes: list[trio.CancelScope] = []
        self.opened = 0

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def listen_addrs(self) -> list[str]:
        return [f"/memory/{self._peer_id}/p2p/{self._peer_id}"]

    async def connect(self, addr: str) -> str:
        return addr.rsplit("/", 1)[-1]

    def connected_peers(self) -> set[str]:
        return {p for p, t in self.net.nodes.items() if p != self._peer_id and not t.dead}

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        self.handlers[protocol] = handler

    async def open_stream(self, peer_id: str, protocol: str) -> _MiniStream:
        await trio.sleep(0.001)
        remote = self.net.nodes.get(peer_id)
        if self.dead or remote is None or remote.dead or protocol not in remote.handlers:
            raise DialError(f"cannot reach {peer_id}")
        a, b = trio.testing.memory_stream_pair()
        mine, theirs = _MiniStream(a, peer_id), _MiniStream(b, self._peer_id)
        self._streams.append(mine)
        remote._streams.append(theirs)
        self.opened += 1
        self.net.nursery.start_soon(remote._run_handler, remote.handlers[protocol], theirs)
        return mine

    async def _run_handler(self, handler: StreamHandler, stream: _MiniStream) -> None:
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            try:
                await handler(stream)
            except P2PServeError:
                pass
            finally:
                await stream.aclose()

    async def kill(self) -> None:
        """Vanish: cancel every handler and close every stream."""
        self.dead = True
        for scope in self._scopes:
            scope.cancel()
        for s in self._streams:
            await s.aclose()

    async def publish(self, topic: str, data: bytes) -> None:
        raise NotImplementedError

    async def subscribe(self, topic: str, validator: Any = None) -> Any:
        raise NotImplementedError

    def peer_events(self) -> Any:
        raise NotImplementedError


# --- serving nodes on the mini network -------------------------------------------------------

WALL0 = 1_700_000_000.0


def wall_clock() -> float:
    """A wall clock that follows trio's (virtual) clock."""
    return WALL0 + trio.current_time()


async def _host(net: MemoryNetwork, s: Signer, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    async with net.open_transport(s) as t:
        task_status.started(t)
        await trio.sleep_forever()


async def connect_all(node: Node, others: Sequence[Node]) -> None:
    """Connect ``node`` to each of ``others`` (memory transport) and introduce them."""
    for o in others:
        await node.transport.connect(o.transport.listen_addrs()[0])
    introduce(node, others)


@dataclass
class Node:
    signer: Signer
    transport: Any
    serve: ServeService
    receipts: list[Receipt] = field(default_factory=list)


async def start_node(
    nursery: trio.Nursery,
    net: MiniNet | MemoryNetwork,
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
    """A started ServeService for test node ``i`` (its peer table starts empty: see ``introduce``)."""
    s = signer(i)
    t: Any
    if isinstance(net, MemoryNetwork):
        t = await nursery.start(_host, net, s)
    else:
        t = net.add(s)
    p = params or PolicyParams(accept_frequency=1.0)
    receipts: list[Receipt] = []

    async def on_receipt(r: Receipt) -> None:
        receipts.append(r)

    serve = ServeService(
        t,
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
    return Node(s, t, serve, receipts)


def introduce(node: Node, others: Sequence[Node], *, stake: int = 1_000_000, seq: int = 1) -> None:
    """Give ``node`` a signed status of each of ``others`` (what gossip would have done)."""
    for o in others:
        models = o.serve.model_status() or ()
        status = Status(
            NETWORK, o.signer.peer_id, seq, 0, (), tuple(replace(m, accepting=True) for m in models),
            True, 0, 0, stake, b"", 2000, b"",
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
