"""Ledger sync service: gossip new blocks, pull what is missing (trio, over the transport contract).

* Gossip: every block this node appends (and every new equivocation proof) is published on
  ``/p2pserve/<network_id>/<genesis digest>/blocks/1`` as its canonical encoding. The topic validator drops
  anything that is not a Block/EquivocationProof of this network, or too large, so it is
  neither delivered nor relayed. Received blocks are collected for ``ingest_window``
  seconds (or up to ``ingest_max`` blocks) and go through ``LedgerStore.ingest`` as one
  batch, one SQLite transaction (every signature is still verified, block by block):
  valid ones are appended, ones with unknown predecessors wait in ``pending`` and trigger
  a pull from the peer that published them. ``on_applied`` hears of every block applied
  from the network (gossip or pull), after its batch is committed.
* Pull, ``/p2pserve/sync/1``: the requester sends :class:`SyncHeads` (its height per
  account); the responder streams the blocks the requester lacks in its acceptance order
  (so payments arrive before their claims), in :class:`SyncBatch` es of at most
  ``max_blocks_per_batch``, then the off-choice blocks of frozen accounts it keeps (so a
  fork choice is computed from the same blocks everywhere), then :class:`SyncDone`
  (``more=True`` when it stopped at ``max_blocks_per_session``; the requester then asks
  again, up to ``max_rounds``). A node pulls from every peer that connects, so one that
  joins late or was offline catches up.
* Time: blocks that wait for the clock (dated ahead, or unbonding not released yet) are
  retried every ``retry_interval`` seconds; expired pending blocks are dropped then.
* Our own chain: a block of ``store.own_account`` that conflicts with ours is handed to
  ``on_own_conflict`` (the ledger service repairs) instead of being proven.

Every count from a peer is bounded (heads per request, blocks per batch and per session,
frame size) and every wait has a timeout; a misbehaving peer only breaks its own stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence

import trio

from p2pserve.errors import (
    InvalidBlock,
    MalformedMessage,
    P2PServeError,
    ProtocolError,
    RemoteProtocolError,
    TransportError,
)
from p2pserve.ledger.blocks import Block, EquivocationProof, NetworkParams, decode_block
from p2pserve.ledger.store import IngestResult, LedgerStore
from p2pserve.net.exchange import open_framed
from p2pserve.net.framed import FramedStream
from p2pserve.transport import PeerEvent, PubsubMessage, Stream, Transport
from p2pserve.wire.codec import MAX_ITEMS, Message, decode
from p2pserve.wire.limits import DEFAULT_LIMITS, Limits
from p2pserve.wire.sync import (
    MAX_PROOFS,
    MAX_WANTS,
    SYNC_PROTOCOL,
    SyncBatch,
    SyncDone,
    SyncHead,
    SyncHeads,
    SyncMismatch,
    blocks_topic,
)

__all__ = ["SYNC_PROTOCOL", "LedgerSync", "blocks_topic"]

log = logging.getLogger(__name__)


_DECODED: dict[bytes, Block | EquivocationProof] = {}
_DECODED_MAX = 16_384


def decode_gossip(data: bytes) -> Block | EquivocationProof:
    """A gossiped block (decoded canonically) or equivocation proof; MalformedMessage otherwise.

    Decoded messages are remembered by their exact bytes (they are immutable): the topic
    validator and the receive loop decode each message once between them, and in the
    simulator the hundreds of nodes of one process share the work."""
    known = _DECODED.get(data)
    if known is not None:
        return known
    decoded: Message = decode(data, expect=(Block, EquivocationProof))
    obj: Block | EquivocationProof = decode_block(data) if isinstance(decoded, Block) else decoded  # type: ignore[assignment]
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    _DECODED[data] = obj
    return obj


class LedgerSync:
    """Gossip + pull for one node's :class:`LedgerStore`. Run it with ``nursery.start``."""

    def __init__(
        self,
        transport: Transport,
        store: LedgerStore,
        *,
        now_ms: Callable[[], int | None] = lambda: None,
        limits: Limits = DEFAULT_LIMITS,
        timeout: float = 10.0,
        max_blocks_per_session: int = 20_000,
        max_rounds: int = 100,
        ingest_window: float = 0.02,
        ingest_max: int = 256,
        retry_interval: float = 1.0,
        max_side_per_session: int = 1024,
        connect_sync_peers: int = 3,
        connect_sync_window: float = 30.0,
        head_sync_interval: float = 5.0,
        on_applied: Callable[[list[Block]], None] | None = None,
        on_own_conflict: Callable[[list[Block], str], None] | None = None,
    ) -> None:
        """``now_ms`` is the wall clock in ms used to refuse blocks from the future (None: no
        such check). ``timeout`` bounds every wait on a peer. Gossiped blocks are ingested
        in batches: the first waits at most ``ingest_window`` seconds for others, and a
        batch holds at most ``ingest_max`` blocks. ``on_applied`` (synchronous, must not
        raise) is called with the blocks each network batch applied; ``on_own_conflict``
        (synchronous) with blocks of our own account that conflict with ours, and the peer
        they came from."""
        self.transport = transport
        self.store = store
        self.now_ms = now_ms
        self.limits = limits
        self.timeout = timeout
        self.max_blocks_per_session = max_blocks_per_session
        self.max_rounds = max_rounds
        self.topic = blocks_topic(store.params.network_id, store.params.digest())
        self._genesis = store.params.encode()
        self._mismatched: set[str] = set()
        """Peers already reported as being on another network or genesis (one line each)."""
        self.ingest_window = ingest_window
        self.ingest_max = ingest_max
        self.retry_interval = retry_interval
        self.max_side_per_session = max_side_per_session
        self.connect_sync_peers = connect_sync_peers
        self.connect_sync_window = connect_sync_window
        self.head_sync_interval = head_sync_interval
        self.on_applied = on_applied
        self.on_own_conflict = on_own_conflict
        self._synced_at: list[float] = []
        """trio times of the recent completed pulls (at most ``connect_sync_peers``)."""
        self._head_missing: dict[str, tuple[bytes, float]] = {}
        self._pending_wake = trio.Event()
        """Per peer, a head block its status named that we lack, and since when."""
        self.withhold: str | None = None
        """An account whose blocks sync answers leave out (our own, until it is confirmed)."""
        self._nursery: trio.Nursery | None = None
        self._syncing: set[str] = set()

    # --- service -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve sync requests, take gossiped blocks, pull from every peer that connects."""
        self.transport.set_handler(SYNC_PROTOCOL, self._handle)
        sub = await self.transport.subscribe(self.topic, self._validate)
        events = self.transport.peer_events()
        send, recv = trio.open_memory_channel[tuple[Block, str]](4 * self.ingest_max)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_peers, events)
            nursery.start_soon(self._ingest_loop, recv)
            nursery.start_soon(self._retry_loop)
            for peer in self.transport.connected_peers():
                self.request_sync(peer)
            task_status.started()
            try:
                async for msg in sub:
                    item = self._on_gossip(msg)
                    if item is not None:
                        await send.send(item)
            finally:
                with trio.CancelScope(shield=True):
                    await sub.aclose()
                nursery.cancel_scope.cancel()

    async def _watch_peers(self, events: AsyncIterator[PeerEvent]) -> None:
        """Pull from a peer that connects, unless ``connect_sync_peers`` pulls completed in
        the last ``connect_sync_window`` seconds: a node joining (or coming back from a
        partition) catches up from its first few connections; after that, gossip and
        :meth:`peer_head` keep it current, and a network of N nodes does not run a full
        sync per connection (N x connections rounds)."""
        async for ev in events:
            if ev.connected and not self._recently_synced():
                self.request_sync(ev.peer_id)

    def _recently_synced(self) -> bool:
        """Enough pulls completed lately, or running now, to skip one on connect."""
        now = trio.current_time()
        recent = [t for t in self._synced_at if now - t < self.connect_sync_window]
        return len(recent) + len(self._syncing) >= self.connect_sync_peers

    def peer_head(self, peer_id: str, head: bytes) -> None:
        """A peer's status says its own chain ends in ``head``. When a later status still
        names a block we do not hold, ``head_sync_interval`` seconds or more after the first
        (so not a block still on its way by gossip), pull from that peer."""
        if not head or self.store.state.head_of(peer_id) == head:
            self._head_missing.pop(peer_id, None)
            return
        now = trio.current_time()
        first = self._head_missing.get(peer_id)
        if first is None or first[0] != head:
            if len(self._head_missing) > 4096:
                self._head_missing.clear()
            self._head_missing[peer_id] = (head, now)
        elif now - first[1] >= self.head_sync_interval:
            self._head_missing[peer_id] = (head, now)
            self.request_sync(peer_id)

    async def _retry_loop(self) -> None:
        while True:
            if not len(self.store.pending):  # nothing waits: sleep until something does
                await self._pending_wake.wait()
            self._pending_wake = trio.Event()
            await trio.sleep(self.retry_interval)
            now = self.now_ms()
            if now is None:
                continue
            try:
                res = self.store.retry_timed(now)
            except P2PServeError as exc:
                log.warning("retrying waiting blocks failed: %s", exc)
                continue
            self._handle_result(res, None)

    async def pull_from(self, peers: Sequence[str]) -> int:
        """Pull from ``peers`` at once (each bounded by ``timeout``); how many answered."""
        answered = 0

        async def one(peer: str) -> None:
            nonlocal answered
            try:
                await self.sync_with(peer)
                answered += 1
            except (TransportError, ProtocolError) as exc:
                log.info("ledger sync with %s failed: %s", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
        return answered

    def request_sync(self, peer_id: str) -> None:
        """Pull from ``peer_id`` in the background (once at a time per peer)."""
        if self._nursery is None or peer_id in self._syncing:
            return
        self._syncing.add(peer_id)
        self._nursery.start_soon(self._background_sync, peer_id)

    async def _background_sync(self, peer_id: str) -> None:
        try:
            await self.sync_with(peer_id)
            self._synced_at = [*self._synced_at, trio.current_time()][-self.connect_sync_peers :]
        except (TransportError, ProtocolError) as exc:
            log.info("ledger sync with %s failed: %s", peer_id, exc)
        finally:
            self._syncing.discard(peer_id)

    async def publish(self, block: Block) -> bytes:
        """Append our own block to the store and gossip it; its hash. Raises InvalidBlock."""
        h = self.store.append(block, now_ms=self.now_ms())
        await self.transport.publish(self.topic, block.encode())
        return h

    async def publish_many(self, blocks: Sequence[Block]) -> int:
        """Append our own blocks in one durable transaction, then gossip each; how many.

        A gossip failure is logged, not raised: the blocks are stored and peers pull them.
        Raises InvalidBlock after storing and gossiping the valid prefix (the blocks
        before the invalid one); ``stored_prefix`` tells how long it is.
        """
        try:
            self.store.append_many(blocks, now_ms=self.now_ms())
            n = len(blocks)
            error: InvalidBlock | None = None
        except InvalidBlock as exc:
            n, error = self.stored_prefix(blocks), exc
        for block in blocks[:n]:
            try:
                await self.transport.publish(self.topic, block.encode())
            except TransportError as exc:
                log.info("gossip of our block %s/%d failed (peers will pull it): %s", block.account, block.height, exc)
        if error is not None:
            raise error
        return n

    def stored_prefix(self, blocks: Sequence[Block]) -> int:
        """How many of ``blocks``, from the first, the store holds."""
        n = 0
        for b in blocks:
            if self.store.state.hash_at(b.account, b.height) != b.digest():
                break
            n += 1
        return n

    # --- gossip ------------------------------------------------------------------------------

    def _validate(self, msg: PubsubMessage) -> bool:
        if len(msg.data) > self.limits.max_pubsub_message:
            return False
        try:
            obj = decode_gossip(msg.data)
        except MalformedMessage:
            return False
        block = obj if isinstance(obj, Block) else obj.first
        return bool(block.network_id == self.store.params.network_id)

    def _on_gossip(self, msg: PubsubMessage) -> tuple[Block, str] | None:
        """Decode one gossip message: a block to ingest (with its publisher), or None (a
        proof, applied here, or garbage)."""
        try:
            obj = decode_gossip(msg.data)
            if isinstance(obj, EquivocationProof):
                if self.store.add_proof(obj):
                    self._spawn_publish(msg.data)
                return None
            return obj, msg.from_peer
        except (MalformedMessage, P2PServeError) as exc:
            log.info("dropping gossip from %s: %s", msg.from_peer, exc)
            return None

    async def _ingest_loop(self, recv: trio.MemoryReceiveChannel[tuple[Block, str]]) -> None:
        """Ingest gossiped blocks in batches: one transaction per ``ingest_window``."""
        async with recv:
            while True:
                batch = [await recv.receive()]
                with trio.move_on_after(self.ingest_window):
                    while len(batch) < self.ingest_max:
                        batch.append(await recv.receive())
                self._ingest_batch(batch)

    def _ingest_batch(self, batch: list[tuple[Block, str]]) -> None:
        try:
            res = self.store.ingest([b for b, _ in batch], now_ms=self.now_ms())
        except P2PServeError as exc:
            log.warning("could not ingest %d gossiped blocks: %s", len(batch), exc)
            return
        if res.waiting:
            waiting = {id(b) for b in res.waiting}
            for block, peer in batch:
                if id(block) in waiting and peer != self.transport.peer_id:
                    self.request_sync(peer)
        if res.own_conflicts:
            origin = {id(b): peer for b, peer in batch}
            self._own_conflict(res.own_conflicts, origin.get(id(res.own_conflicts[0]), ""))
        self._handle_result(res, None)

    def _handle_result(self, res: IngestResult, peer: str | None) -> None:
        if len(self.store.pending):
            self._pending_wake.set()
        for proof in res.proofs:
            self._spawn_publish(proof.encode())
        if res.own_conflicts and peer is not None:
            self._own_conflict(res.own_conflicts, peer)
        self._applied(res.applied)

    def _own_conflict(self, blocks: list[Block], peer: str) -> None:
        if self.on_own_conflict is not None:
            self.on_own_conflict(blocks, peer)

    def _applied(self, blocks: list[Block]) -> None:
        if blocks and self.on_applied is not None:
            self.on_applied(blocks)

    def _spawn_publish(self, data: bytes) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.transport.publish, self.topic, data)

    # --- pull --------------------------------------------------------------------------------

    async def sync_with(self, peer_id: str) -> int:
        """Pull everything ``peer_id`` has that we lack; the number of blocks applied.

        Raises TransportError / RemoteProtocolError if the peer fails or misbehaves.
        """
        applied = 0
        for _ in range(self.max_rounds):
            n, more = await self._one_round(peer_id)
            applied += n
            if not more or n == 0:
                break
        return applied

    async def _one_round(self, peer_id: str) -> tuple[int, bool]:
        fs = await open_framed(
            self.transport, peer_id, SYNC_PROTOCOL, connect_s=self.timeout, max_frame=self.limits.max_frame
        )
        applied = 0
        try:
            heads = sorted(self.store.heads().items())
            if len(heads) > MAX_ITEMS:  # only the first MAX_ITEMS; the rest come as "new"
                heads = heads[:MAX_ITEMS]
            wants = tuple(self.store.wanted_hashes()[:MAX_WANTS])
            req = SyncHeads(self.store.params.network_id, tuple(SyncHead(a, h, hh) for a, (h, hh) in heads), wants,
                            self._genesis)
            await fs.send(req, timeout=self.timeout)
            received = 0
            while True:
                msg = await fs.recv((SyncBatch, SyncDone, SyncMismatch), timeout=self.timeout)
                if isinstance(msg, SyncMismatch):
                    self._mismatch(peer_id, msg.genesis)
                    return applied, False
                if isinstance(msg, SyncDone):
                    for raw in msg.proofs:
                        try:
                            self.store.add_proof(decode(raw, expect=EquivocationProof))
                        except (MalformedMessage, P2PServeError):
                            continue
                    return applied, msg.more
                assert isinstance(msg, SyncBatch)
                received += len(msg.blocks)
                if received > self.max_blocks_per_session + self.max_side_per_session + MAX_WANTS:
                    raise RemoteProtocolError(f"{peer_id} sent more than {self.max_blocks_per_session} blocks")
                blocks = []
                for raw in msg.blocks:
                    try:
                        obj = decode_gossip(raw)
                    except MalformedMessage:
                        continue
                    if isinstance(obj, Block):
                        blocks.append(obj)
                res = self.store.ingest(blocks, now_ms=self.now_ms())
                applied += len(res.applied)
                self._handle_result(res, peer_id)
        finally:
            await fs.aclose()

    def _mismatch(self, peer_id: str, theirs: bytes) -> None:
        """Say once per peer that it is on another network or genesis, and how it differs."""
        if peer_id in self._mismatched:
            return
        if len(self._mismatched) < 1024:
            self._mismatched.add(peer_id)
        ours = self.store.params
        try:
            other = decode(theirs, expect=NetworkParams)
        except (MalformedMessage, P2PServeError):
            log.warning("peer %s is on another network (its genesis does not decode); ignoring it", peer_id)
            return
        if other.network_id != ours.network_id:
            log.warning("peer %s is on network %r, we are on %r: ignoring it (same --bootstrap, wrong network_id?)",
                        peer_id, other.network_id, ours.network_id)
        else:
            log.warning("peer %s is on network %r with another genesis: %s; ignoring it (every node of a network "
                        "needs the same ledger_params)", peer_id, ours.network_id, "; ".join(ours.differences(other)))

    async def _handle(self, stream: Stream) -> None:
        fs = FramedStream(stream, self.limits.max_frame)
        try:
            req = await fs.recv(SyncHeads, timeout=self.timeout)
            if req.network_id != self.store.params.network_id or req.genesis != self._genesis:
                self._mismatch(fs.remote_peer, req.genesis)
                await fs.send(SyncMismatch(self._genesis), timeout=self.timeout)
                return
            theirs = {h.account: (h.height, h.hash) for h in req.heads}
            batch: list[bytes] = []
            sent = 0
            more = False
            for raw in self.store.raw_blocks_missing(theirs, skip=self.withhold):
                if sent >= self.max_blocks_per_session:
                    more = True
                    break
                batch.append(raw)
                sent += 1
                if len(batch) >= self.limits.max_blocks_per_batch or sum(map(len, batch)) > self.limits.max_frame // 2:
                    await fs.send(SyncBatch(tuple(batch)), timeout=self.timeout)
                    batch = []
            if batch:
                await fs.send(SyncBatch(tuple(batch)), timeout=self.timeout)
            wanted = self.store.blocks_by_hash(req.wants[:MAX_WANTS])
            if wanted:
                await fs.send(SyncBatch(tuple(wanted)), timeout=self.timeout)
            side = self.store.side_rows()[: self.max_side_per_session]
            for start in range(0, len(side), self.limits.max_blocks_per_batch):
                await fs.send(SyncBatch(tuple(side[start : start + self.limits.max_blocks_per_batch])), timeout=self.timeout)
            await fs.send(SyncDone(more, tuple(self.store.proof_rows()[:MAX_PROOFS])), timeout=self.timeout)
        except (TransportError, ProtocolError) as exc:
            log.info("sync request from %s failed: %s", stream.remote_peer, exc)
        finally:
            await fs.aclose()
