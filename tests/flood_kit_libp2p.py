"""A status flood over real libp2p, measured: a gateway and fake-backend executors on real
libp2p hosts (127.0.0.1, this process), an attacker process that writes freshly signed
statuses of its own straight onto a gossipsub stream to the gateway, and requests through
the gateway meanwhile. Used by ``tests/test_gossip_flood_libp2p.py``; the same
:func:`flood_and_ask` with a defence switched off shows what the defence is for.

Why the attacker is its own process: in one trio loop, it and the gateway's stream reader
take turns, so the reader sees a fraction of what is written and the test would measure
the scheduler. Why it writes straight onto a stream: py-libp2p 0.8.1's ``Pubsub.publish``
costs ~0.8 ms a message here (it checks its own signature, and gossipsub re-reads and
re-parses the host's addresses for the signed peer record of every RPC), so one publisher
tops out near 1,200 statuses/s. The attacker builds each gossipsub ``Message`` itself (the
Status signed by its key, the pubsub envelope signed by the same key, as strict signing
requires) and writes ``RPC(publish=[...])`` frames on a ``/meshsub/1.1.0`` stream, as the
issue's reproduction did: exactly what a gossipsub peer publishing at that rate sends.

Run alone: ``python -m tests.flood_kit_libp2p ADDR NETWORK GENESIS_HEX RATE SECONDS PER_RPC``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.utils.varint import encode_varint_prefixed

from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import NodeConfig, parse_config
from p2pserve.crypto import Signer, sha256
from p2pserve.membership.gossip import status_topic
from p2pserve.membership.verified import SHARED
from p2pserve.node import Node
from p2pserve.transport import Stream
from p2pserve.wire.gossip import ModelStatus, Status
from tests.attack_kit import MODEL as _ATTACK_MODEL
from tests.attack_kit import ask
from transports.libp2p import open_libp2p_transport

MODEL = _ATTACK_MODEL
INTERVAL = 1.0
"""Status interval of every honest node (s)."""
TTL = 3.0
"""Peer TTL (s): an honest executor whose statuses stop for 3 s is expired."""
ATTACKER = Signer(sha256(b"flooder"))


# -- the honest side ---------------------------------------------------------------------

def node_config(gateway: bool, bootstrap: tuple[str, ...]) -> NodeConfig:
    sp: dict[str, object] = {"status_interval": INTERVAL, "peer_ttl": TTL, "bootstrap": list(bootstrap),
                             "listen": ["/ip4/127.0.0.1/tcp/0"]}
    if gateway:
        return parse_config({"server_params": sp, "models": []})
    sp["accept_frequency"] = 1.0
    return parse_config({"server_params": sp, "models": [{"model_path": MODEL, "backend": "fake",
                                                          "dispatch_params": {"max_concurrency": 8}}]})


@asynccontextmanager
async def gateway_and_executors(executors: int) -> AsyncIterator[list[Node]]:
    """Node 0 a gateway (no model), the others executors of MODEL on the fake backend, each
    on its own libp2p host on 127.0.0.1, all bootstrapped from the gateway."""
    nodes: list[Node] = []
    stop = trio.Event()

    async def run(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        signer = Signer(sha256(f"flood-libp2p-{i}".encode()))
        boot = tuple(nodes[0].transport.listen_addrs()) if nodes else ()
        backends = {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))} if i else {}
        async with open_libp2p_transport(signer, ["/ip4/127.0.0.1/tcp/0"]) as transport:
            node = Node(node_config(i == 0, boot), signer, transport, backends=backends, seed=i)
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                nodes.append(node)
                task_status.started()
                await stop.wait()
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for i in range(executors + 1):
            await nursery.start(run, i)
        try:
            yield nodes
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 10


async def wait_ready(nodes: list[Node]) -> None:
    """Until the gateway can route to every executor and every ledger account is open."""
    gateway, executors = nodes[0], nodes[1:]
    while (len(gateway.serve._candidates(MODEL, {}, set(), trio.current_time())) < len(executors)
           or not all(n.ledger.free() > 0 for n in nodes)):
        await trio.sleep(0.05)


@dataclass
class Arrivals:
    """Gossipsub messages of one origin that reached a host's ``Pubsub.push_msg``: the first
    step after the RPC frame is parsed, before the score gate, the libp2p signature check
    and our validator."""

    origin: bytes
    count: int = 0


def count_arrivals(node: Node, origin: str) -> Arrivals:
    """Count ``origin``'s messages arriving at ``node``'s libp2p pubsub (instrumentation of
    the py-libp2p object; nothing of p2pserve's is changed)."""
    pubsub = node.transport._pubsub  # type: ignore[attr-defined]
    arrivals = Arrivals(ID.from_base58(origin).to_bytes())
    push_msg = pubsub.push_msg

    async def counting(forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg.from_id == arrivals.origin:
            arrivals.count += 1
        await push_msg(forwarder, msg)

    pubsub.push_msg = counting
    return arrivals


def watch_losses(node: Node) -> list[str]:
    """The peers ``node`` expires from now on (its own handler still runs)."""
    lost: list[str] = []
    on_change = node.gossip.on_peer_change

    def watch(pid: str, up: bool) -> None:
        if not up:
            lost.append(pid)
        if on_change is not None:
            on_change(pid, up)

    node.gossip.on_peer_change = watch
    return lost


# -- the attacker ------------------------------------------------------------------------

@dataclass
class Flooder:
    """Statuses of ``signer``'s own identity, valid for the victim's network and genesis,
    each freshly signed (the Status by its key, the pubsub message by the same key)."""

    signer: Signer
    network_id: str
    genesis: bytes
    addr: str
    sent: int = 0
    _seq: int = 0
    _sign: Callable[[bytes], bytes] = field(init=False)

    def __post_init__(self) -> None:
        pair = create_new_key_pair(self.signer.seed)
        self._sign, self._key = pair.private_key.sign, pair.public_key.serialize()
        self._from = ID.from_pubkey(pair.public_key).to_bytes()
        self._topic = status_topic(self.network_id)
        self._models = (ModelStatus(MODEL, 4096, 0, 0, 0, 0.0, True),)

    def message(self) -> rpc_pb2.Message:
        self._seq += 1
        st = Status(self.network_id, self.signer.peer_id, self._seq, 0, (self.addr,), self._models, True, 0, 0, 0,
                    b"", 2000, False, self.genesis, b"").signed(self.signer)
        msg = rpc_pb2.Message(data=st.encode(), topicIDs=[self._topic], from_id=self._from,
                              seqno=self._seq.to_bytes(8, "big"))
        msg.signature = self._sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = self._key
        return msg

    def frames(self, count: int, per_rpc: int) -> list[bytes]:
        """``count`` fresh statuses (rounded up to whole frames) as gossipsub RPC frames of
        ``per_rpc`` messages each, ready to write."""
        return [encode_varint_prefixed(rpc_pb2.RPC(publish=[self.message() for _ in range(per_rpc)]).SerializeToString())
                for _ in range(-(-count // per_rpc))]

    async def flood(self, stream: Stream, frames: list[bytes], per_rpc: int, rate: float) -> float:
        """Write ``frames`` (of ``per_rpc`` statuses each) onto ``stream`` at ``rate``
        statuses a second, catching up after every pause; the seconds it took."""
        start, written = trio.current_time(), 0
        while written < len(frames):
            due = min(len(frames), int(rate * (trio.current_time() - start)) // per_rpc)
            if due > written:
                await stream.send_all(b"".join(frames[written:due]))
                self.sent += (due - written) * per_rpc
                written = due
            else:
                await trio.sleep(0.002)
        return trio.current_time() - start


async def attack(victim_addr: str, network_id: str, genesis: bytes, rate: float, seconds: float,
                 per_rpc: int) -> dict[str, float]:
    """Sign ``rate * seconds`` statuses of the :data:`ATTACKER` identity (each fresh: its own
    seq and signatures; signed ahead, so the attacker's CPU does not cap the rate), connect
    to ``victim_addr`` (ending in ``/p2p/<id>``) from a fresh libp2p host, open a gossipsub
    stream, print ``ready <peer id>``, flood; the statuses sent and the seconds it took."""
    victim = victim_addr.rsplit("/p2p/", 1)[1]
    async with open_libp2p_transport(ATTACKER, ["/ip4/127.0.0.1/tcp/0"]) as t:
        flooder = Flooder(ATTACKER, network_id, genesis, t.listen_addrs()[0])
        frames = flooder.frames(round(rate * seconds), per_rpc)
        await t.connect(victim_addr)
        stream = await t.open_stream(victim, str(PROTOCOL_ID_V11))
        print("ready", ATTACKER.peer_id, flush=True)
        took = await flooder.flood(stream, frames, per_rpc, rate)
        await trio.sleep(1.0)  # let the victim read what is still buffered before hanging up
        await stream.aclose()
    return {"sent": flooder.sent, "seconds": took}


class AttackerProcess:
    """The attacker's process (``python -m tests.flood_kit_libp2p``), its stdout read by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    @classmethod
    async def start(cls, nursery: trio.Nursery, victim: Node, rate: float, seconds: float,
                    per_rpc: int) -> AttackerProcess:
        """Start it against ``victim``; returns once it has connected and said ``ready``."""
        args = [victim.transport.listen_addrs()[0], victim.gossip.network_id, victim.gossip.genesis.hex(),
                str(rate), str(seconds), str(per_rpc)]
        proc = await nursery.start(functools.partial(
            trio.run_process, [sys.executable, "-m", "tests.flood_kit_libp2p", *args], stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[1], env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        attacker = cls(proc)
        with trio.fail_after(30):
            line = await attacker.line()
        if not line.startswith("ready "):
            raise AssertionError(f"the attacker said {line!r}")
        return attacker

    async def line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"the attacker exited ({await self.proc.wait()}) mid-line")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()


# -- the measurement ---------------------------------------------------------------------

@dataclass
class FloodReport:
    sent: int = 0
    """Statuses the attacker wrote."""
    seconds: float = 0.0
    """How long it took to write them."""
    arrived: int = 0
    """Of them, how many reached the gateway's pubsub."""
    flood_dropped: int = 0
    """Statuses the gateway's validator dropped by a rate limit."""
    checked: int = 0
    """Statuses decoded and signature-checked in this process meanwhile (all nodes)."""
    latencies: list[float] = field(default_factory=list)
    """Of every request that succeeded within the bound (s)."""
    failures: list[str] = field(default_factory=list)
    """Requests that failed or overran the bound."""
    ages: list[float] = field(default_factory=list)
    """At each request: the oldest honest executor's last status at the gateway (s)."""
    missing: int = 0
    """Requests after which an honest executor was missing from the gateway's table."""
    lost: list[str] = field(default_factory=list)
    """Peers the gateway expired."""

    def summary(self) -> str:
        lat = sorted(self.latencies) or [float("nan")]
        return (f"flood: {self.sent} statuses in {self.seconds:.2f} s = {self.sent / self.seconds:.0f}/s written, "
                f"{self.arrived / self.seconds:.0f}/s reached the gateway's pubsub ({self.arrived}); "
                f"{self.flood_dropped} dropped by its rate limit, {self.checked} signature-checked; "
                f"{len(self.latencies)} requests ok, {len(self.failures)} failed; latency p50 {lat[len(lat) // 2]:.3f} s, "
                f"max {lat[-1]:.3f} s; oldest honest status {max(self.ages, default=float('nan')):.2f} s; "
                f"{self.missing} checks missed an executor, {len(self.lost)} peers expired")


async def flood_and_ask(nodes: list[Node], *, rate: float, seconds: float, per_rpc: int, ask_every: float,
                        ask_bound: float) -> FloodReport:
    """Flood ``nodes[0]`` from an attacker process for ``seconds`` while asking it for an
    answer every ``ask_every`` seconds (each bounded by ``ask_bound``); what happened."""
    gateway = nodes[0]
    honest = {n.peer_id for n in nodes[1:]}
    report = FloodReport()
    report.lost = watch_losses(gateway)
    arrivals = count_arrivals(gateway, ATTACKER.peer_id)
    checked0, dropped0 = SHARED.checked, gateway.gossip.flood_dropped
    async with trio.open_nursery() as nursery:
        attacker = await AttackerProcess.start(nursery, gateway, rate, seconds, per_rpc)
        start = trio.current_time()
        while trio.current_time() - start < seconds:
            t0 = trio.current_time()
            try:
                with trio.fail_after(ask_bound):
                    await ask(gateway)
                report.latencies.append(trio.current_time() - t0)
            except Exception as exc:  # a measurement: every failure is recorded, none raised
                report.failures.append(repr(exc))
            now = trio.current_time()
            seen = {e.peer_id: e.last_seen for e in gateway.peers.entries()}
            report.missing += not honest <= set(seen)
            report.ages.append(max(now - seen.get(p, -float("inf")) for p in honest))
            await trio.sleep_until(t0 + ask_every)
        result = json.loads(await attacker.line())
    report.sent, report.seconds = int(result["sent"]), float(result["seconds"])
    report.arrived = arrivals.count
    report.checked = SHARED.checked - checked0
    report.flood_dropped = gateway.gossip.flood_dropped - dropped0
    return report


def main(argv: list[str]) -> None:
    """Run :func:`attack` with ``ADDR NETWORK GENESIS_HEX RATE SECONDS PER_RPC`` and print
    its result as a JSON line."""
    addr, network, genesis, rate, seconds, per_rpc = argv
    result = trio.run(attack, addr, network, bytes.fromhex(genesis), float(rate), float(seconds), int(per_rpc))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
