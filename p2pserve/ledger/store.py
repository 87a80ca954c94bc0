"""The ledger store: a node's ledger file (:mod:`p2pserve.ledger.tables`: ``blocks``,
``side``, ``proofs``, ``meta``) and the state replayed from it, with the intake of blocks
from the network.

Blocks waiting for a predecessor, a cited payment or time live in memory only
(:class:`~p2pserve.ledger.pending.PendingPool`); sync fetches them again after a restart.
The off-choice blocks of frozen accounts are kept (``side``, bounded per account): the
fork choice may change when a claim arrives.

Invariants: the in-memory ``state`` always equals :func:`p2pserve.ledger.forks.replay` of
``blocks`` + ``side`` + ``proofs``, which depends on that *set* only, so two nodes holding
the same blocks hold the same state and fingerprint. Each append is one transaction
(``append_many`` and each ``ingest`` batch: one transaction for many blocks), committed
durably before anyone can see the state advanced.

Equivocation: a second block at a filled height stores a proof, keeps the new block in
``side`` and rebuilds the state under the account's fork choice (rare: O(history)). A
conflict on ``own_account`` (the node's own chain, e.g. a stale data dir) is not recorded as
a proof here: it is handed to the caller (``IngestResult.own_conflicts``), which repairs by
adopting the network's chain (:meth:`LedgerStore.rollback`).

Failures of SQLite become :class:`~p2pserve.errors.StoreError`; rule violations are
:class:`~p2pserve.errors.InvalidBlock`. Opening replays the blocks without re-verifying
signatures (they were verified on append; ``p2pserve audit`` verifies everything) but
re-hashes every block and re-checks every link and balance. ``path=":memory:"`` gives an
in-memory store with the same behaviour (tests, simulator).

Not thread-safe: one store per node, used from one trio task at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pserve.errors import InvalidBlock, MalformedMessage, StoreError
from p2pserve.ledger import forks, rules
from p2pserve.ledger.blocks import Block, ClaimBody, EquivocationProof, NetworkParams, UnstakeBody, decode_block
from p2pserve.ledger.pending import (
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_PER_ACCOUNT,
    TIME_KEY,
    PendingPool,
    UnstakeWatch,
)
from p2pserve.ledger.rules import DEPENDENCY_REASONS, TIME_REASONS, Prepared
from p2pserve.ledger.state import ForkView, LedgerState
from p2pserve.ledger.tables import DB_NAME, StoredRow, Tables
from p2pserve.wire.codec import decode

__all__ = ["DB_NAME", "DEFAULT_MAX_PENDING", "IngestResult", "LedgerStore", "StoredRow"]

log = logging.getLogger(__name__)

FORK_WINDOW = 16
"""Blocks below a forked height a sync answer includes (repairs forks up to this deep per round)."""
MAX_SIDE_PER_ACCOUNT = 256
"""Most off-choice blocks kept per frozen account (a cheater cannot fill the disk)."""
@dataclass(slots=True)
class IngestResult:
    """What :meth:`LedgerStore.ingest` did with a batch."""

    applied: list[Block] = field(default_factory=list)
    """Blocks now in the ledger, in order (including pending ones they unblocked)."""
    pending: int = 0
    """Blocks of the batch kept waiting for missing blocks or time."""
    waiting: list[Block] = field(default_factory=list)
    """Blocks of the batch waiting for missing blocks (to ask whoever sent them)."""
    rejected: list[tuple[Block, str]] = field(default_factory=list)
    """Blocks refused, with their reason code (duplicates excluded)."""
    duplicates: int = 0
    proofs: list[EquivocationProof] = field(default_factory=list)
    """New equivocation proofs found (to gossip)."""
    own_conflicts: list[Block] = field(default_factory=list)
    """Blocks of ``own_account`` at heights we already filled differently (to repair)."""


class LedgerStore:
    """A node's ledger: SQLite file + replayed :class:`LedgerState`."""

    def __init__(
        self,
        path: Path | str,
        params: NetworkParams,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_per_account: int = DEFAULT_MAX_PENDING_PER_ACCOUNT,
        own_account: str | None = None,
    ) -> None:
        """Open (creating if needed) the store at ``path`` for the network ``params``.

        ``own_account`` is the node's own account (conflicts on it are repaired, not proven).
        Raises StoreError if the file is unreadable, corrupt, made for other params or by an
        older p2pserve, or if ``params`` is not a sound genesis.
        """
        try:
            params.check_genesis()
        except MalformedMessage as exc:
            raise StoreError(f"refusing the network genesis: {exc}") from exc
        self.path = str(path)
        self.params = params
        self.own_account = own_account
        ttl = max(10 * 60_000, params.unbonding_delay_ms + params.max_clock_skew_ms + 60_000)
        self.pending = PendingPool(max_total=max_pending, max_per_account=max_pending_per_account, ttl_ms=ttl)
        self.unstakes = UnstakeWatch(params)
        self._claims_citing: dict[str, dict[bytes, Prepared]] = {}
        self._frozen_blocks: dict[str, dict[bytes, Prepared]] = {}
        self.rebuilds = 0
        """How often the state was rebuilt under a new fork choice (rare; for tests and metrics)."""
        self.rejected_own: list[tuple[Block, str]] = []
        """Our own blocks a rebuild could no longer apply (the service logs and repairs)."""
        self.tables = Tables(self.path, params)
        try:
            self.state = self._load()
        except StoreError:
            self.tables.close()
            raise

    @classmethod
    def in_data_dir(cls, data_dir: Path | str, params: NetworkParams, **kw: Any) -> LedgerStore:
        """The store at ``<data_dir>/ledger.sqlite3``."""
        return cls(Path(data_dir) / DB_NAME, params, **kw)

    # --- loading and rebuilding ----------------------------------------------------------------

    def _load(self) -> LedgerState:
        blocks: list[Prepared] = []
        for row in self.rows():
            try:
                p = rules.prepare(decode_block(row.raw), row.raw)
            except (MalformedMessage, InvalidBlock) as exc:
                raise StoreError(f"{self.path}: block #{row.seq} ({row.account} height {row.height}) is invalid: {exc}") from exc
            if p.hash != row.hash or (p.block.account, p.block.height) != (row.account, row.height):
                raise StoreError(f"{self.path}: block #{row.seq} does not match its stored columns")
            blocks.append(p)
        side = [self._prepare_raw(raw) for raw in self.tables.side_raws()]
        res = self._replay(blocks, side)
        on_side = {s.hash for s in side}
        for bad, why in res.rejected + res.waiting:
            if bad.hash not in on_side:
                raise StoreError(f"{self.path}: block {bad.block.account} height {bad.block.height} is invalid: {why}")
        return res.state

    def _replay(self, blocks: list[Prepared], side: list[Prepared]) -> forks.ReplayResult:
        """Replay ``blocks`` + ``side`` with every stored proof; rebuild the fork indexes."""
        proofs = []
        for raw in self.tables.proof_raws():
            try:
                proofs.append(decode(raw, expect=EquivocationProof))
            except MalformedMessage as exc:
                raise StoreError(f"{self.path}: invalid stored equivocation proof: {exc}") from exc
        try:
            res = forks.replay(self.params, [*blocks, *side], proofs)
        except InvalidBlock as exc:
            raise StoreError(f"{self.path}: invalid stored equivocation proof: {exc}") from exc
        frozen = res.state.core.forks
        self._frozen_blocks = {a: {} for a in frozen}
        self._claims_citing = {a: {} for a in frozen}
        for p in [*blocks, *side]:
            view = frozen.get(p.block.account)
            if view is not None and p.block.height >= view.height:
                self._frozen_blocks[p.block.account][p.hash] = p
            body = p.body
            if isinstance(body, ClaimBody) and body.source_account in frozen:
                self._claims_citing[body.source_account][p.hash] = p
        return res

    def _rebuild(self) -> None:
        """Recompute the state from every stored block under the current fork choices and
        rewrite ``blocks`` and ``side`` to match (inside the current transaction)."""
        blocks = [self._prepare_raw(r.raw) for r in self.rows()]
        side = [self._prepare_raw(raw) for raw in self.tables.side_raws()]
        res = self._replay(blocks, side)
        self.rebuilds += 1
        self.tables.replace_blocks(res.applied)
        self.tables.clear_side()
        for p in res.side:
            self._insert_side(p)
        for p, exc in res.waiting:
            self.pending.add(p, forks.dependency_key(p, exc.reason), 0)
        for p, exc in res.rejected:
            log.warning("ledger rebuild drops %s height %d: %s", p.block.account, p.block.height, exc)
            if p.block.account == self.own_account:
                self.rejected_own.append((p.block, exc.reason))
        self.state = res.state

    def _prepare_raw(self, raw: bytes) -> Prepared:
        try:
            return rules.prepare(decode_block(raw), raw)
        except (MalformedMessage, InvalidBlock) as exc:
            raise StoreError(f"{self.path}: corrupt stored block: {exc}") from exc

    def _batch(self) -> Any:
        """One durable transaction; on failure the state is rebuilt from the file."""

        def reload() -> None:
            self.state = self._load()

        return self.tables.batch(reload)

    # --- writes ------------------------------------------------------------------------------

    def append(self, block: Block, *, now_ms: int | None = None) -> bytes:
        """Check ``block`` against the state, store it durably, advance the state; its hash.

        Raises InvalidBlock (nothing stored, state unchanged). On ``equivocation`` (of
        another account than ``own_account``) the proof is stored and the account frozen
        before the error is raised.
        """
        return self.append_many([block], now_ms=now_ms)[0]

    def append_many(self, blocks: Sequence[Block], *, now_ms: int | None = None) -> list[bytes]:
        """Append blocks in order in one durable transaction; their hashes.

        Stops at the first invalid block: the blocks before it are kept (they are valid),
        then its InvalidBlock is raised.
        """
        done: list[bytes] = []
        error: InvalidBlock | None = None
        with self._batch():
            for block in blocks:
                try:
                    p = rules.prepare(block)
                    self._apply(p, now_ms)
                except InvalidBlock as exc:
                    if exc.reason == "equivocation" and block.account != self.own_account:
                        self._on_equivocation(p, IngestResult())
                    error = exc
                    break
                done.append(p.hash)
        if error is not None:
            raise error
        return done

    def _apply(self, p: Prepared, now_ms: int | None) -> None:
        """Check and apply one block inside the current transaction (raises InvalidBlock)."""
        pl = rules.plan(p, self.state, now_ms=now_ms, not_before=self.unstakes.not_before)
        if pl.void is not None:
            body = p.body
            assert isinstance(body, ClaimBody)
            view = self._choose(body.source_account, extra=p)
            current = self.state.fork(body.source_account)
            if current is None or view.canonical != current.canonical:
                # this claim changes which branch of the equivocator counts: rebuild with it
                self._insert(p)
                self._rebuild()
                if self.state.hash_at(p.block.account, p.block.height) != p.hash:
                    raise InvalidBlock("frozen", "the claim no longer applies after the fork choice changed")
                return
        self._insert(p)
        self.state = rules.commit(pl, self.state)
        self._after_apply(p, now_ms)

    def _insert(self, p: Prepared) -> None:
        self.tables.insert_block(p)

    def _after_apply(self, p: Prepared, now_ms: int | None) -> None:
        body = p.body
        if now_ms is None:
            return
        self.unstakes.applied(now_ms)
        if isinstance(body, UnstakeBody):
            self.unstakes.seen(p.hash, p.block.timestamp_ms, now_ms)
        if isinstance(body, ClaimBody) and body.source_account in self._claims_citing:
            self._claims_citing[body.source_account][p.hash] = p

    def add_proof(self, proof: EquivocationProof) -> bool:
        """Keep a proof and freeze its account (or lower its fork height); False if it adds
        nothing. Raises InvalidBlock("bad-proof") for a proof that does not verify."""
        rules.verify_proof(proof, self.state)
        current = self.state.fork(proof.account)
        if current is not None and current.height <= proof.height:
            return False
        with self._batch():
            self.tables.put_proof(proof.account, proof.encode())
            for b in (proof.first, proof.second):
                if self.state.hash_at(b.account, b.height) != b.digest():
                    self._insert_side(rules.prepare(b))
            self._rebuild()
        return True

    def rollback(self, account: str, from_height: int) -> list[Block]:
        """Drop ``account``'s blocks at ``from_height`` and above (our own chain, when the
        network holds another one) and rebuild; the blocks dropped, lowest first."""
        with self._batch():
            dropped = [self._prepare_raw(raw).block for raw in self.tables.delete_chain_from(account, from_height)]
            self._rebuild()
        return dropped

    def ingest(self, blocks: Sequence[Block], *, now_ms: int | None, received_ms: int | None = None) -> IngestResult:
        """Take blocks from the network (gossip or sync), in any order, in one transaction.

        Each block is appended if valid; one whose predecessor or cited payment is missing,
        or that must wait for time, waits in the pending pool (bounded, expiring) and is
        retried when what it waits for is appended; others are rejected with their reason.
        Never raises InvalidBlock; an SQLite failure rolls the whole batch back (StoreError).
        """
        res = IngestResult()
        received = received_ms if received_ms is not None else now_ms or 0
        with self._batch():
            for block in blocks:
                try:
                    p = rules.prepare(block)
                except InvalidBlock as exc:
                    res.rejected.append((block, exc.reason))
                    continue
                self._ingest_one(p, now_ms, received, res, fresh=True)
        return res

    def retry_timed(self, now_ms: int) -> IngestResult:
        """Retry the blocks that wait for time (and drop expired pending blocks)."""
        self.pending.expire(now_ms)
        res = IngestResult()
        timed = self.pending.take_timed()
        if timed:
            with self._batch():
                for p in timed:
                    self._ingest_one(p, now_ms, now_ms, res, fresh=False)
        return res

    def _ingest_one(self, first: Prepared, now_ms: int | None, received: int, res: IngestResult, *, fresh: bool) -> None:
        queue = [(first, fresh)]
        while queue:
            p, is_fresh = queue.pop(0)
            rebuilds = self.rebuilds
            try:
                self._apply(p, now_ms)
            except InvalidBlock as exc:
                self._not_applied(p, exc, received, res, is_fresh)
                if exc.reason == "frozen":  # now on the side: claims waiting for it may apply (void)
                    queue.extend((q, False) for q in self.pending.take(("p", p.hash)))
            else:
                res.applied.append(p.block)
                queue.extend((q, False) for q in self.pending.take(("h", p.block.account, p.block.height)))
                queue.extend((q, False) for q in self.pending.take(("p", p.hash)))
            if self.rebuilds != rebuilds:  # the fork choice changed: whatever waits may apply now
                queue.extend((q, False) for q in self.pending.blocks())
                self.pending.clear()

    def _not_applied(self, p: Prepared, exc: InvalidBlock, received: int, res: IngestResult, fresh: bool) -> None:
        reason = exc.reason
        if reason in DEPENDENCY_REASONS or reason in TIME_REASONS:
            key = forks.dependency_key(p, reason) if reason in DEPENDENCY_REASONS else TIME_KEY
            self.pending.add(p, key, received)
            if fresh:
                res.pending += 1
                if reason in DEPENDENCY_REASONS:
                    res.waiting.append(p.block)
        elif reason == "duplicate":
            res.duplicates += 1
        elif reason == "equivocation":
            res.rejected.append((p.block, reason))
            if p.block.account == self.own_account:
                res.own_conflicts.append(p.block)
            else:
                self._on_equivocation(p, res)
        elif reason == "frozen":
            self._add_side(p)
        else:
            res.rejected.append((p.block, reason))

    def _on_equivocation(self, p: Prepared, res: IngestResult) -> None:
        """A second block at a filled height: keep it on the side, prove, rebuild."""
        b = p.block
        existing = self.block_at(b.account, b.height)
        if existing is None:
            return
        proof = EquivocationProof(existing, b)
        current = self.state.fork(b.account)
        self._insert_side(p)
        if current is not None and current.height <= b.height:
            self._refork(b.account, p)
            return
        self.tables.put_proof(b.account, proof.encode())
        self._rebuild()
        res.proofs.append(proof)

    def _add_side(self, p: Prepared) -> None:
        """A block of a frozen account off its current choice: keep it; it may matter later."""
        self._insert_side(p)
        self._refork(p.block.account, p)

    def _refork(self, account: str, p: Prepared) -> None:
        """Recompute ``account``'s fork choice now that ``p`` is known; rebuild if it changed."""
        known = self._frozen_blocks.setdefault(account, {})
        known[p.hash] = p
        view = self._choose(account)
        current = self.state.fork(account)
        if current is not None and view.canonical != current.canonical:
            self._rebuild()
        elif current is not None and dict(view.side) != dict(current.side):
            self.state = rules.apply_proof(self.state.core.frozen[account], self.state, view)

    def _choose(self, account: str, extra: Prepared | None = None) -> ForkView:
        current = self.state.fork(account)
        assert current is not None
        claims = list(self._claims_citing.get(account, {}).values())
        if extra is not None:
            claims.append(extra)
        return forks.choose(account, current.height, self._frozen_blocks.get(account, {}).values(), claims)

    def _insert_side(self, p: Prepared) -> None:
        if not self.tables.insert_side(p, MAX_SIDE_PER_ACCOUNT):
            return
        view = self.state.fork(p.block.account)
        if view is not None and p.block.height >= view.height:
            self._frozen_blocks.setdefault(p.block.account, {})[p.hash] = p
        body = p.body
        if isinstance(body, ClaimBody) and body.source_account in self._claims_citing:
            self._claims_citing[body.source_account][p.hash] = p  # every known claim counts

    # --- reads -------------------------------------------------------------------------------

    def pending_count(self) -> int:
        return len(self.pending)

    def pending_blocks(self) -> list[Block]:
        """Waiting blocks, oldest first."""
        return [p.block for p in self.pending.blocks()]

    def missing(self) -> dict[str, int]:
        """``account -> lowest height wanted`` for chains that pending blocks are waiting on."""
        return self.pending.missing(self.state)

    def wanted_hashes(self) -> list[bytes]:
        """Hashes of the payments pending claims cite (to ask peers for them by hash)."""
        return self.pending.wanted_payments()

    def blocks_by_hash(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Raw blocks (applied or on the side) with these hashes, those we have."""
        return self.tables.raws_by_hash(hashes)

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """``account -> (height, hash)`` of each chain's newest block."""
        return self.state.heads()

    def block_at(self, account: str, height: int) -> Block | None:
        return self.tables.block_at(account, height)

    def get(self, block_hash: bytes) -> Block | None:
        return self.tables.get(block_hash)

    def blocks_after(self, account: str, height: int, limit: int) -> list[Block]:
        """Up to ``limit`` blocks of ``account`` above ``height`` (-1: from its open), in order."""
        return self.tables.blocks_after(account, height, limit)

    def raw_blocks_missing(self, heads: dict[str, tuple[int, bytes]], *, skip: str | None = None) -> Iterator[bytes]:
        """Raw blocks the asker lacks, in acceptance order (each after what it depends on).

        ``heads`` is ``account -> (height held, hash there)`` (absent: none held). Blocks
        above the asker's height are sent; where we hold another block at its height, our
        last :data:`FORK_WINDOW` blocks of that chain up to its height are sent too, so
        the asker sees the fork. Reads only the chains concerned (indexed by account), not
        the whole table. ``skip`` names an account left out."""
        state = self.state
        above: dict[str, int] = {}
        for account, (height, _) in state.heads().items():
            if account == skip:
                continue
            theirs, their_hash = heads.get(account, (-1, b""))
            if 0 <= theirs <= height and state.hash_at(account, theirs) != their_hash:
                theirs = max(-1, theirs - FORK_WINDOW)
            if height > theirs:
                above[account] = theirs
        yield from self.tables.chains_above(above)

    def rows(self) -> Iterator[StoredRow]:
        """Every stored block row in acceptance order (raw bytes, unchecked)."""
        return self.tables.rows()

    def side_block(self, block_hash: bytes) -> Block | None:
        """An off-choice block of a frozen account, by hash."""
        return self.tables.side_block(block_hash)

    def side_rows(self) -> list[bytes]:
        """Raw off-choice blocks of frozen accounts (sync and audit send them along)."""
        return self.tables.side_raws()

    def proof_rows(self) -> list[bytes]:
        return self.tables.proof_raws()

    def count(self) -> int:
        return self.tables.count()

    def close(self) -> None:
        """Close the file (idempotent)."""
        self.tables.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
