"""The ledger store: one SQLite file per node (``<data-dir>/ledger.sqlite3``) and the state
replayed from it.

Owns: the ``blocks`` table (raw canonical bytes plus indexed account, height and hash
columns, in acceptance order), ``proofs`` (equivocation proofs, one per frozen account),
``pending`` (blocks waiting for a missing predecessor or cited payment, bounded) and
``meta`` (the network's :class:`~p2pserve.ledger.blocks.NetworkParams`, fixed at creation).

Invariants: a block is in ``blocks`` only if ``rules.plan`` accepted it against the state
of the blocks before it, so acceptance order is a valid replay order; the in-memory
``state`` always equals the replay of ``blocks`` plus ``proofs``; each append is one
transaction (``append_many`` and each ``ingest`` batch: one transaction for many blocks),
committed durably before anyone can see the state advanced (WAL with ``synchronous=FULL``:
NORMAL would be corruption-safe too, but could lose the last commits on power loss, and a
node that forgets a block it already gossiped would then equivocate at that height).

Failures of SQLite become :class:`~p2pserve.errors.StoreError`; rule violations are
:class:`~p2pserve.errors.InvalidBlock`. Opening replays the blocks without re-verifying
signatures (they were verified on append; ``p2pserve audit`` verifies everything) but
re-hashes every block and re-checks every link and balance. ``path=":memory:"`` gives an
in-memory store with the same behaviour (tests, simulator).

Not thread-safe: one store per node, used from one trio task at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pserve.errors import InvalidBlock, MalformedMessage, StoreError
from p2pserve.ledger import rules
from p2pserve.ledger.blocks import Block, ClaimBody, EquivocationProof, NetworkParams, decode_block
from p2pserve.ledger.rules import DEPENDENCY_REASONS, LedgerState
from p2pserve.wire.codec import decode

__all__ = ["DB_NAME", "DEFAULT_MAX_PENDING", "IngestResult", "LedgerStore", "StoredRow"]

DB_NAME = "ledger.sqlite3"
DEFAULT_MAX_PENDING = 4096
"""Most blocks kept waiting for their predecessors; the oldest go first."""
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    seq INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    height INTEGER NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    raw BLOB NOT NULL,
    UNIQUE (account, height)
);
CREATE TABLE IF NOT EXISTS proofs (account TEXT PRIMARY KEY, raw BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    hash BLOB PRIMARY KEY,
    account TEXT NOT NULL,
    height INTEGER NOT NULL,
    raw BLOB NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_age ON pending (received_ms);
"""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of ``blocks`` as stored (for audit: the columns are checked against ``raw``)."""

    seq: int
    account: str
    height: int
    hash: bytes
    raw: bytes


@dataclass(slots=True)
class IngestResult:
    """What :meth:`LedgerStore.ingest` did with a batch."""

    applied: list[Block] = field(default_factory=list)
    """Blocks now in the ledger, in order (including pending ones they unblocked)."""
    pending: int = 0
    """Blocks of the batch kept waiting for missing blocks."""
    waiting: list[Block] = field(default_factory=list)
    """Those blocks (to ask whoever sent them for what they depend on)."""
    rejected: list[tuple[Block, str]] = field(default_factory=list)
    """Blocks refused, with their reason code (duplicates excluded)."""
    duplicates: int = 0
    proofs: list[EquivocationProof] = field(default_factory=list)
    """New equivocation proofs found (to gossip)."""


class LedgerStore:
    """A node's ledger: SQLite file + replayed :class:`LedgerState`."""

    def __init__(self, path: Path | str, params: NetworkParams, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        """Open (creating if needed) the store at ``path`` for the network ``params``.

        Raises StoreError if the file is unreadable, corrupt, or made for other params.
        """
        self.path = str(path)
        self.params = params
        self.max_pending = max_pending
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open ledger store {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._init_meta()
            self.state = self._replay()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"ledger store {self.path}: {exc}") from exc
        except StoreError:
            self._db.close()
            raise

    @classmethod
    def in_data_dir(cls, data_dir: Path | str, params: NetworkParams, **kw: int) -> LedgerStore:
        """The store at ``<data_dir>/ledger.sqlite3``."""
        return cls(Path(data_dir) / DB_NAME, params, **kw)

    def _init_meta(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='params'").fetchone()
        if row is None:
            with self._tx():
                self._db.execute("INSERT INTO meta VALUES ('params', ?)", (self.params.encode(),))
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION).encode(),))
            return
        try:
            stored = decode(bytes(row[0]), expect=NetworkParams)
        except MalformedMessage as exc:
            raise StoreError(f"{self.path}: unreadable network params: {exc}") from exc
        if stored != self.params:
            raise StoreError(f"{self.path} belongs to network {stored!r}, not {self.params!r}")

    def _replay(self) -> LedgerState:
        state = LedgerState.genesis(self.params)
        for row in self.rows():
            try:
                block = decode_block(row.raw)
                p = rules.prepare(block, row.raw)
                if p.hash != row.hash or (block.account, block.height) != (row.account, row.height):
                    raise StoreError(f"{self.path}: block #{row.seq} does not match its stored columns")
                state = rules.commit(rules.plan(p, state, verify=False), state)
            except (MalformedMessage, InvalidBlock) as exc:
                raise StoreError(f"{self.path}: block #{row.seq} ({row.account} height {row.height}) is invalid: {exc}") from exc
        for (raw,) in self._db.execute("SELECT raw FROM proofs"):
            try:
                state = rules.apply_proof(decode(bytes(raw), expect=EquivocationProof), state)
            except (MalformedMessage, InvalidBlock) as exc:
                raise StoreError(f"{self.path}: invalid stored equivocation proof: {exc}") from exc
        return state

    # --- transactions ------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction; inside another (an ingest batch) it joins that one."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """One durable transaction around several appends; the in-memory state advances with
        each (no await can happen inside, so nobody sees it ahead of the file). On any
        failure the transaction is rolled back and the state rebuilt from the file; an
        SQLite failure is raised as StoreError."""
        if self._db.in_transaction:
            yield
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self.state = self._replay()
            except (sqlite3.Error, StoreError):
                pass
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
            raise

    # --- writes ------------------------------------------------------------------------------

    def append(self, block: Block, *, now_ms: int | None = None) -> bytes:
        """Check ``block`` against the state, store it durably, advance the state; its hash.

        Raises InvalidBlock (nothing stored, state unchanged). On ``equivocation`` the proof
        is stored and the account frozen before the error is raised.
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
                    done.append(self._append_in_tx(block, now_ms))
                except InvalidBlock as exc:
                    error = exc
                    break
        if error is not None:
            if error.reason == "equivocation":
                self._record_equivocation(blocks[len(done)])
            raise error
        return done

    def _append_in_tx(self, block: Block, now_ms: int | None) -> bytes:
        """Check, insert and apply one block inside the current transaction; its hash."""
        pl = rules.plan(rules.prepare(block), self.state, now_ms=now_ms)
        h = pl.prepared.hash
        self._db.execute(
            "INSERT INTO blocks (account, height, hash, raw) VALUES (?, ?, ?, ?)",
            (block.account, block.height, h, block.encode()),
        )
        self._db.execute("DELETE FROM pending WHERE hash = ?", (h,))
        self.state = rules.commit(pl, self.state)
        return h

    def _record_equivocation(self, block: Block) -> EquivocationProof | None:
        existing = self.block_at(block.account, block.height)
        if existing is None:
            return None
        proof = EquivocationProof(existing, block)
        if self.state.is_frozen(block.account):
            return None
        try:
            self.state = rules.apply_proof(proof, self.state)
        except InvalidBlock:
            return None
        self.add_proof(proof)
        return proof

    def add_proof(self, proof: EquivocationProof) -> bool:
        """Keep a verified proof and freeze its account; False if it was already frozen.

        Raises InvalidBlock("bad-proof") for a proof that does not verify.
        """
        if self.state.is_frozen(proof.account):
            try:
                with self._tx():
                    self._db.execute("INSERT OR IGNORE INTO proofs VALUES (?, ?)", (proof.account, proof.encode()))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot store proof in {self.path}: {exc}") from exc
            return False
        state = rules.apply_proof(proof, self.state.copy())
        try:
            with self._tx():
                self._db.execute("INSERT OR IGNORE INTO proofs VALUES (?, ?)", (proof.account, proof.encode()))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store proof in {self.path}: {exc}") from exc
        self.state = state
        return True

    def ingest(self, blocks: Sequence[Block], *, now_ms: int | None, received_ms: int | None = None) -> IngestResult:
        """Take blocks from the network (gossip or sync), in any order, in one transaction.

        Each block is appended if valid; one whose predecessor or cited payment is missing
        waits in ``pending`` (bounded; oldest evicted) and is retried whenever something is
        appended; others are rejected with their reason. Never raises InvalidBlock; an SQLite
        failure rolls the whole batch back (StoreError).
        """
        res = IngestResult()
        received = received_ms if received_ms is not None else now_ms or 0
        with self._batch():
            progressed = False
            for block in blocks:
                progressed |= self._ingest_one(block, now_ms, received, res, True)
            while progressed:
                progressed = False
                for block in self.pending_blocks():
                    progressed |= self._ingest_one(block, now_ms, 0, res, False)
        return res

    def _ingest_one(self, block: Block, now_ms: int | None, received_ms: int, res: IngestResult, fresh: bool) -> bool:
        try:
            self._append_in_tx(block, now_ms)
        except InvalidBlock as exc:
            if exc.reason == "equivocation":
                self._record_equivocation(block)
            if exc.reason in DEPENDENCY_REASONS:
                if fresh:
                    self.add_pending(block, received_ms)
                    res.pending += 1
                    res.waiting.append(block)
                return False
            if not fresh:
                self._drop_pending(block)
            if exc.reason == "duplicate":
                res.duplicates += 1
            else:
                res.rejected.append((block, exc.reason))
                if exc.reason == "equivocation":
                    proof = self.state.frozen().get(block.account)
                    if proof is not None and block in (proof.first, proof.second):
                        res.proofs.append(proof)
            return False
        res.applied.append(block)
        return True

    def add_pending(self, block: Block, received_ms: int) -> None:
        """Keep a block whose predecessors are unknown; evict the oldest beyond the bound."""
        try:
            with self._tx():
                self._db.execute(
                    "INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?)",
                    (block.digest(), block.account, block.height, block.encode(), received_ms),
                )
                (n,) = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()
                if n > self.max_pending:
                    self._db.execute(
                        "DELETE FROM pending WHERE hash IN (SELECT hash FROM pending ORDER BY received_ms, hash LIMIT ?)",
                        (n - self.max_pending,),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store pending block in {self.path}: {exc}") from exc

    def _drop_pending(self, block: Block) -> None:
        try:
            self._db.execute("DELETE FROM pending WHERE hash = ?", (block.digest(),))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    # --- reads -------------------------------------------------------------------------------

    def pending_blocks(self) -> list[Block]:
        """Waiting blocks, by account and height (so a chain fills in one pass)."""
        try:
            rows = self._db.execute("SELECT raw FROM pending ORDER BY account, height").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        out = []
        for (raw,) in rows:
            try:
                out.append(decode_block(bytes(raw)))
            except MalformedMessage:
                continue
        return out

    def pending_count(self) -> int:
        return int(self._query_one("SELECT COUNT(*) FROM pending")[0])

    def missing(self) -> dict[str, int]:
        """``account -> lowest height wanted`` for chains that pending blocks are waiting on."""
        out: dict[str, int] = {}
        for block in self.pending_blocks():
            head = self.state.account(block.account)
            want = 0 if head is None else head.height + 1
            if block.height >= want:
                out[block.account] = min(out.get(block.account, want), want)
            if isinstance(body := _claim_body(block), ClaimBody):
                src = self.state.account(body.source_account)
                swant = 0 if src is None else src.height + 1
                if body.source_height >= swant:
                    out[body.source_account] = min(out.get(body.source_account, swant), swant)
        return out

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """``account -> (height, hash)`` of each chain's newest block."""
        return self.state.heads()

    def block_at(self, account: str, height: int) -> Block | None:
        row = self._query_one("SELECT raw FROM blocks WHERE account = ? AND height = ?", (account, height))
        return None if row is None else self._decode(bytes(row[0]))

    def get(self, block_hash: bytes) -> Block | None:
        row = self._query_one("SELECT raw FROM blocks WHERE hash = ?", (block_hash,))
        return None if row is None else self._decode(bytes(row[0]))

    def blocks_after(self, account: str, height: int, limit: int) -> list[Block]:
        """Up to ``limit`` blocks of ``account`` above ``height`` (-1: from its open), in order."""
        try:
            rows = self._db.execute(
                "SELECT raw FROM blocks WHERE account = ? AND height > ? ORDER BY height LIMIT ?", (account, height, limit)
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return [self._decode(bytes(r[0])) for r in rows]

    def raw_blocks_missing(self, heads: dict[str, int]) -> Iterator[bytes]:
        """Raw blocks above ``heads`` (``account -> height held``; absent: none held), in
        acceptance order, so every block comes after what it depends on."""
        for row in self.rows():
            if row.height > heads.get(row.account, -1):
                yield row.raw

    def rows(self) -> Iterator[StoredRow]:
        """Every stored block row in acceptance order (raw bytes, unchecked)."""
        try:
            cur = self._db.execute("SELECT seq, account, height, hash, raw FROM blocks ORDER BY seq")
            for seq, account, height, h, raw in cur:
                yield StoredRow(seq, account, height, bytes(h), bytes(raw))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def proof_rows(self) -> list[bytes]:
        try:
            return [bytes(r[0]) for r in self._db.execute("SELECT raw FROM proofs ORDER BY account")]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def count(self) -> int:
        return int(self._query_one("SELECT COUNT(*) FROM blocks")[0])

    def _query_one(self, sql: str, args: tuple[object, ...] = ()) -> Any:
        """The first row (a tuple), or None."""
        try:
            row = self._db.execute(sql, args).fetchone()
            return row
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def _decode(self, raw: bytes) -> Block:
        try:
            return decode_block(raw)
        except MalformedMessage as exc:
            raise StoreError(f"{self.path}: corrupt stored block: {exc}") from exc

    def close(self) -> None:
        """Close the file (idempotent)."""
        try:
            self._db.close()
        except sqlite3.Error:  # pragma: no cover
            pass

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _claim_body(block: Block) -> object:
    try:
        return block.decoded_body()
    except MalformedMessage:
        return None


def read_params(path: Path | str) -> NetworkParams:
    """The network params stored in an existing ledger file (read-only; for audit)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key='params'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if row is None:
        raise StoreError(f"{path} has no network params")
    try:
        return decode(bytes(row[0]), expect=NetworkParams)
    except MalformedMessage as exc:
        raise StoreError(f"{path}: unreadable network params: {exc}") from exc
