"""Gossip membership: publish our signed status, learn peers from theirs, dial what we learn.

Every ``interval`` seconds the node publishes a :class:`~p2pserve.wire.infer.Status` on
``/p2pserve/<network_id>/status/1``. The topic validator accepts only well-formed statuses of
our network whose signature verifies and whose signer is the pubsub origin, so forged or
garbled statuses are neither delivered nor relayed. The validator and the receive loop share
a :class:`~p2pserve.membership.verified.VerifiedStatuses` memo, so each message is decoded
and verified once and the receive loop gets the object the validator accepted. Received
statuses go into the pure
:class:`~p2pserve.membership.table.PeerTable`; peers silent for ``peer_ttl`` are expired. While fewer
than ``target_connections`` peers are connected, the service dials known peers' advertised
addresses (and the bootstrap addresses while it has no connection at all), so a node given
one bootstrap address ends up knowing everyone without a tracker.

The interval adapts to the network's size: a node gossips every
``max(interval, known_nodes / max_status_rate)`` seconds, so each node receives at most about
``max_status_rate`` statuses per second however large the network grows (gossip CPU per node
stays bounded; full-membership gossip is otherwise O(N) messages per node per interval).
Each status declares its sender's current interval, and receivers expire a peer after
``ttl_intervals`` of *its* intervals. A newly seen peer makes the node gossip at once (at most
once per base interval), so joins spread fast even when the steady-state interval is long.

Status sequence numbers start at the wall-clock millisecond of service start, so they keep
increasing across restarts of the same node.

Robustness against floods and sybils (``docs/security.md``, network robustness):

* **Rate limits in the validator**, before the signature check and before the message can
  reach a subscription queue: each origin gets a token bucket refilled every third of
  ``min(base interval, its declared interval)`` (at least ``min_status_gap`` seconds; burst
  4), so an honest node (at most one status per base interval plus one poke) is never
  limited while a flood from one origin is dropped, not verified, and not relayed. Where the
  transport names the connection a message was relayed over (``msg.via``: libp2p does, the
  memory transport does not), that connection gets a bucket too (``relay_rate`` statuses a
  second, burst ``relay_burst``), which bounds a flood of many throwaway origins over one
  connection. A status not newer than the one listed for its origin is dropped there too
  (a replay). Offenders get one ``offence`` line per peer and kind a minute at most;
  ``offence``, ``peer_seen`` and ``peer_lost`` lines together stay within a
  :class:`~p2pserve.membership.ratelimit.LineBudget` (32 at once, then one per 2 s each).
* **Reachability.** A peer learned from gossip is not offered work until it was reached:
  a probe loop dials newly listed peers (at most ``probe_concurrency`` at once, each within
  ``probe_timeout``, while fewer than ``reach_target`` peers are connected), marks them
  reached, or backs off (see
  :class:`~p2pserve.membership.table.PeerTable`); a peer that advertised addresses that do
  not answer is logged as an offence. Connection-target dialing uses reached peers only.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from p2pserve.clock import SYSTEM_CLOCK, Clock
from p2pserve.crypto import Signer
from p2pserve.errors import P2PServeError
from p2pserve.eventlog import event
from p2pserve.membership.ratelimit import LineBudget, OffenceLog, TokenBuckets
from p2pserve.membership.redial import Redialer, peer_of
from p2pserve.membership.table import PeerEntry, PeerTable, UpdateResult
from p2pserve.membership.verified import SHARED, VerifiedStatuses
from p2pserve.rng import derive, fresh_seed
from p2pserve.transport import PubsubMessage, Transport
from p2pserve.wire.gossip import MAX_STATUS_INTERVAL_MS, ModelStatus, Status
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = ["GossipService", "LocalState", "status_topic"]

log = logging.getLogger(__name__)


def status_topic(network_id: str) -> str:
    return f"/p2pserve/{network_id}/status/1"


@dataclass(frozen=True, slots=True)
class LocalState:
    """What the node says about itself in its next status."""

    models: tuple[ModelStatus, ...] = ()
    accepting: bool = True
    running: int = 0
    queued: int = 0
    stake: int = 0
    ledger_head: bytes = b""
    judge: bool = False


class GossipService:
    """Status gossip, peer table maintenance and peer dialing for one node."""

    def __init__(
        self,
        transport: Transport,
        signer: Signer,
        peers: PeerTable,
        *,
        interval: float = 2.0,
        max_status_rate: float = 5.0,
        target_connections: int = 6,
        bootstrap: tuple[str, ...] = (),
        local_state: Callable[[], LocalState] = LocalState,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        verified: VerifiedStatuses | None = None,
        genesis: bytes = b"",
        probe_timeout: float = 2.0,
        probe_concurrency: int = 8,
        reach_target: int = 16,
        min_status_gap: float = 0.1,
        relay_rate: float = 50.0,
        relay_burst: int = 512,
    ) -> None:
        """``verified`` remembers checked statuses (default: the process-wide memo);
        ``genesis`` is the network parameters' digest (:func:`p2pserve.ledger.blocks.genesis_digest`):
        statuses carrying another are not accepted. The rest bound floods and sybils (see
        the module docstring)."""
        self.transport = transport
        self.signer = signer
        self.peers = peers
        self.network_id = peers.network_id
        self.topic = status_topic(self.network_id)
        self.interval = interval
        self.max_status_rate = max_status_rate
        self.target_connections = target_connections
        self.bootstrap = bootstrap
        self.local_state = local_state
        self.rng = rng if rng is not None else derive(fresh_seed(), "gossip")
        self.clock = clock
        self.verified = verified if verified is not None else SHARED
        self.genesis = genesis
        self._seq = clock.wall_ms()
        self.published = 0
        self.received = 0
        self.rejected = 0
        self.on_peer_change: Callable[[str, bool], None] | None = None
        self.on_status: Callable[[Status], None] | None = None
        """Called with every accepted status (synchronous, must not raise)."""
        self._wake = trio.Event()
        self._last_poke = -float("inf")
        self.redial = Redialer(bootstrap, first=interval, cap=5 * interval)
        """Bootstrap and lost peers' addresses, dialed with backoff while below target."""
        self._bootstrap_misses: dict[str, tuple[int, float]] = {}
        """Per unreachable bootstrap address: failed tries, when we last said so."""
        self._addrs: dict[str, tuple[str, ...]] = {}
        """The addresses each listed peer announced when it joined (remembered for redialing)."""
        self.probe_timeout = probe_timeout
        self.probe_concurrency = probe_concurrency
        self.reach_target = reach_target
        self.min_status_gap = min_status_gap
        self._origins = TokenBuckets(period=max(interval / 3, min_status_gap), burst=4)
        self._relays = TokenBuckets(period=1.0 / relay_rate, burst=relay_burst, max_keys=1024)
        self.offences = OffenceLog()
        self.lines = LineBudget(burst=32, period=2.0)
        """Bounds ``peer_seen``, ``peer_lost`` and ``offence`` lines (module docstring)."""
        self.flood_dropped = 0
        """Statuses dropped by a rate limit."""
        self.stale_dropped = 0
        """Statuses dropped as not newer than the listed one (replays, late copies)."""
        self.probes_failed = 0

    # -- pure-ish pieces -------------------------------------------------------------------

    def current_interval(self) -> float:
        """Seconds between our statuses now: the base interval, stretched for big networks."""
        n = len(self.peers) + 1
        return min(max(self.interval, n / self.max_status_rate), MAX_STATUS_INTERVAL_MS / 1000)

    def make_status(self) -> Status:
        """Our next signed status."""
        self._seq += 1
        st = self.local_state()
        status = Status(
            network_id=self.network_id,
            peer_id=self.signer.peer_id,
            seq=self._seq,
            timestamp_ms=self.clock.wall_ms(),
            addrs=tuple(self.transport.listen_addrs()[: DEFAULT_LIMITS.max_peers_per_status]),
            models=st.models,
            accepting=st.accepting,
            running=st.running,
            queued=st.queued,
            stake=st.stake,
            ledger_head=st.ledger_head,
            interval_ms=max(1, round(self.current_interval() * 1000)),
            judge=st.judge,
            genesis=self.genesis,
            signature=b"",
        )
        return status.signed(self.signer)

    def validate(self, msg: PubsubMessage) -> bool:
        """Topic validator: within the rate limits, our network and genesis, signed by the
        pubsub origin, signature valid, newer than the status listed for its origin."""
        if len(msg.data) > DEFAULT_LIMITS.max_pubsub_message:
            return False
        network_id, origin, genesis = self.network_id, msg.from_peer, self.genesis
        if origin == self.signer.peer_id:
            return self.verified.status_of(msg.data, lambda s: s.peer_id == origin and s.genesis == genesis) is not None
        now = trio.current_time()
        via: str | None = getattr(msg, "via", None)  # the relaying connection, where the transport says
        if via == origin or via == self.signer.peer_id:
            via = None
        entry = self.peers.get(origin)
        period = self._origin_period(entry)
        if not self._origins.peek(origin, now, period):
            self._flooded(origin, "sent statuses faster than its interval allows", now)
            return False
        if via is not None and not self._relays.peek(via, now):
            self._flooded(via, "relayed statuses faster than the relay limit", now)
            return False
        status = self.verified.status_of(
            msg.data, lambda s: s.network_id == network_id and s.peer_id == origin and s.genesis == genesis
        )
        if status is None:
            return False
        if entry is not None and status.seq <= entry.status.seq:
            self.stale_dropped += 1
            return False
        self._origins.take(origin, now, period)
        if via is not None:
            self._relays.take(via, now)
        return True

    def _origin_period(self, entry: PeerEntry | None) -> float:
        """Refill period of an origin's bucket: a third of the shorter of our base interval
        and the one it declared (honest nodes send one status per interval plus at most one
        poke per base interval), never below ``min_status_gap``."""
        interval = self.interval
        if entry is not None:
            interval = min(interval, entry.status.interval_ms / 1000)
        return max(interval / 3, self.min_status_gap)

    def _flooded(self, peer: str, what: str, now: float) -> None:
        self.flood_dropped += 1
        self._offence(peer, "flood", what, now)

    def _offence(self, peer: str, kind: str, what: str, now: float) -> None:
        """One ``offence`` line per peer and kind a minute at most, with the count it covers
        (and no more than the line budget allows across all peers: sybils are many)."""
        n = self.offences.record(peer, kind, now)
        if n is None:
            return
        left_out = self.lines.take("offence", now)
        if left_out is not None:
            event(log, "offence", level=logging.WARNING, peer=peer, kind=kind, what=what, count=n,
                  **({"lines_left_out": left_out} if left_out else {}))

    def _peer_line(self, name: str, now: float, **fields: Any) -> None:
        """A ``peer_seen`` / ``peer_lost`` line, within the line budget (identities are free:
        a thousand sybils must not write a thousand lines)."""
        left_out = self.lines.take(name, now)
        if left_out is not None:
            event(log, name, **fields, **({"lines_left_out": left_out} if left_out else {}))

    def accepted(self, msg: PubsubMessage) -> Status | None:
        """The status a delivered ``msg`` carries: the object :meth:`validate` accepted
        (remembered by its bytes), or checked afresh if it was forgotten meanwhile or never
        validated; None for a message that fails the checks."""
        origin, genesis = msg.from_peer, self.genesis
        return self.verified.status_of(msg.data, lambda s: s.peer_id == origin and s.genesis == genesis)

    # -- service ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. Started means: subscribed, first status published."""
        sub = await self.transport.subscribe(self.topic, self.validate)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop, sub)
                await self._publish()
                nursery.start_soon(self._publish_loop)
                nursery.start_soon(self._maintain_loop)
                nursery.start_soon(self._probe_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await sub.aclose()

    def poke(self) -> None:
        """Publish a status now rather than at the next tick (at most once per base interval)."""
        now = trio.current_time()
        if now - self._last_poke >= self.interval:
            self._last_poke = now
            self._wake.set()

    async def _publish(self) -> None:
        try:
            await self.transport.publish(self.topic, self.make_status().encode())
            self.published += 1
        except P2PServeError as exc:
            log.warning("status publish failed: %s", exc)

    async def _publish_loop(self) -> None:
        while True:
            # ±10% jitter so nodes started together do not gossip in lockstep
            with trio.move_on_after(self.current_interval() * self.rng.uniform(0.9, 1.1)):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._publish()

    async def _receive_loop(self, sub: object) -> None:
        async for msg in sub:  # type: ignore[attr-defined]
            status = self.accepted(msg)
            if status is None:
                self.rejected += 1
                continue
            via: str | None = getattr(msg, "via", None)
            result = self.peers.update(
                status, trio.current_time(), verified=True, gossiped=True, source=via if via != status.peer_id else None
            )
            if result.refused:
                log.debug("peer %s not listed: %s", status.peer_id, result.value)
                continue
            self.received += 1
            if self.on_status is not None:
                self.on_status(status)
            if result is UpdateResult.NEW:
                self._peer_line("peer_seen", trio.current_time(), peer=status.peer_id, addrs=list(status.addrs[:4]),
                                models=[m.name for m in status.models[:8]])
                self._addrs[status.peer_id] = status.addrs
                if status.peer_id in self.transport.connected_peers():
                    self.peers.mark_reached(status.peer_id)  # a connection it holds with us: reached
                self.poke()  # let the newcomer learn about us without waiting a full interval
                if self.on_peer_change:
                    self.on_peer_change(status.peer_id, True)

    async def _maintain_loop(self) -> None:
        # expire at a finer grain than the interval, so a dead peer goes within its ttl + interval/4
        tick = min(self.interval / 4, self.peers.ttl / 8)
        next_dial = 0.0
        while True:
            now = trio.current_time()
            for pid in self.peers.expire(now):
                self._peer_line("peer_lost", now, peer=pid)
                self.redial.lost(self._addrs.pop(pid, ()), now)
                if self.on_peer_change:
                    self.on_peer_change(pid, False)
            if now >= next_dial:
                await self._dial_some()
                next_dial = now + self.interval
            await trio.sleep_until(self._next_maintenance(next_dial, tick))

    def _next_maintenance(self, next_dial: float, tick: float) -> float:
        """When the maintenance loop must wake: to dial, or ``tick`` after the earliest peer
        deadline. Sleeping past a few ticks is safe: a status received meanwhile sets a
        deadline at least ``ttl`` later, and the sleep never lasts longer than ``ttl``."""
        now = trio.current_time()
        wake = min(next_dial, now + self.peers.ttl)
        deadline = self.peers.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline + tick)
        return max(wake, now + tick / 4)

    async def _dial_some(self) -> None:
        """Below the connection target: dial bootstrap and lost peers' addresses that are due
        (each on its own backoff), then peers known from gossip we are not connected to."""
        connected = self.transport.connected_peers()
        want = self.target_connections - len(connected)
        if want <= 0:
            return
        for addr in self.redial.due(trio.current_time(), connected, want):
            ok = await self._dial(addr)
            wait = self.redial.result(addr, ok, trio.current_time())
            if ok:
                want -= 1
                self._bootstrap_misses.pop(addr, None)
            elif addr in self.bootstrap:
                self._bootstrap_failed(addr, wait)
        connected = self.transport.connected_peers()
        want = self.target_connections - len(connected)
        if want <= 0:
            return
        # reached peers, and peers the probe loop leaves alone (they serve no model) that
        # never failed a dial: an address that does not answer is not tried twice here
        peers = self.peers
        unconnected = [
            e for e in peers.entries()
            if e.peer_id not in connected and e.status.addrs
            and (peers.routable(e.peer_id) or (not e.status.models and not peers.failures(e.peer_id)))
        ]
        self.rng.shuffle(unconnected)
        for entry in unconnected[:want]:
            for addr in entry.status.addrs:
                if await self._dial(addr):
                    peers.mark_reached(entry.peer_id)
                    break
            else:
                peers.mark_unreachable(entry.peer_id, trio.current_time())

    async def _probe_loop(self) -> None:
        """Reach newly listed peers (see the module docstring): once per status interval
        (at most 4 base intervals), probe whoever is due while fewer than ``reach_target`` peers are connected (a node
        needs a sample of executors, not a connection to each: past the target only peers
        that connect to us, or that we reach for the connection target, become routable).
        One pass per interval, not one per new peer: peers join in bursts, and every extra
        wake-up costs (in the simulator, a virtual-clock jump for each of hundreds of nodes)."""
        while True:
            now = trio.current_time()
            connected = self.transport.connected_peers()
            for pid in connected:  # a connection it holds with us: reached (a no-op for most)
                self.peers.mark_reached(pid)
            room = self.reach_target - len(connected)
            if room > 0:
                limiter = trio.CapacityLimiter(self.probe_concurrency)
                async with trio.open_nursery() as nursery:
                    for entry in self.peers.due_probes(now, room):
                        nursery.start_soon(self._probe, entry, limiter)
            # the status interval, stretched in big networks (a newcomer's status comes no
            # faster) but at most 4 base intervals (sybils must not slow probing down)
            await trio.sleep_until(now + min(self.current_interval(), 4 * self.interval))

    async def _probe(self, entry: PeerEntry, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            pid = entry.peer_id
            if pid in self.transport.connected_peers():
                self.peers.mark_reached(pid)
                return
            for addr in entry.status.addrs[:4]:
                if peer_of(addr) != pid:
                    continue
                if await self._dial(addr, self.probe_timeout):
                    self.peers.mark_reached(pid)
                    return
            now = trio.current_time()
            self.probes_failed += 1
            wait = self.peers.mark_unreachable(pid, now)
            self._offence(pid, "unreachable", f"advertised addresses that do not answer; next try in {wait:.0f} s", now)

    def _bootstrap_failed(self, addr: str, wait: float) -> None:
        """One warning per unreachable bootstrap address a minute at most, with the retry backoff."""
        now = trio.current_time()
        tries, last = self._bootstrap_misses.get(addr, (0, -math.inf))
        tries += 1
        if now - last >= 60.0:
            log.warning("bootstrap %s unreachable (%d tries); retrying every %.0f s or less", addr, tries, wait)
            last = now
        self._bootstrap_misses[addr] = (tries, last)

    async def _dial(self, addr: str, timeout: float | None = None) -> bool:
        try:
            with trio.fail_after(timeout if timeout is not None else max(self.interval, 2.0)):
                await self.transport.connect(addr)
            return True
        except (P2PServeError, trio.TooSlowError) as exc:
            log.debug("dial %s failed: %s", addr, exc)
            return False
