"""The ledger's SQLite file: its tables and every query, and nothing about ledger rules.

Tables: ``blocks`` (raw canonical bytes plus indexed account, height and hash columns, in an
order the rules accept), ``side`` (off-choice blocks of frozen accounts, bounded per
account), ``proofs`` (the lowest equivocation proof per frozen account) and ``meta`` (the
network's :class:`~p2pserve.ledger.blocks.NetworkParams`, fixed at creation, and the
schema version). WAL with ``synchronous=FULL``: NORMAL would be corruption-safe too, but
could lose the last commits on power loss, and a node that forgets a block it already
gossiped would then equivocate at that height. ``path=":memory:"`` is an in-memory file.

Every SQLite failure becomes :class:`~p2pserve.errors.StoreError`. Not thread-safe: used by
one :class:`~p2pserve.ledger.store.LedgerStore` from one trio task at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pserve.errors import MalformedMessage, StoreError
from p2pserve.ledger.blocks import Block, NetworkParams, decode_block
from p2pserve.ledger.rules import Prepared
from p2pserve.wire.codec import decode

__all__ = ["DB_NAME", "SCHEMA_VERSION", "StoredRow", "Tables"]

DB_NAME = "ledger.sqlite3"
SCHEMA_VERSION = 2

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
CREATE TABLE IF NOT EXISTS side (hash BLOB PRIMARY KEY, account TEXT NOT NULL, height INTEGER NOT NULL, raw BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS side_by_account ON side (account);
CREATE TABLE IF NOT EXISTS proofs (account TEXT PRIMARY KEY, raw BLOB NOT NULL);
DROP TABLE IF EXISTS pending;
"""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of ``blocks`` as stored (for audit: the columns are checked against ``raw``)."""

    seq: int
    account: str
    height: int
    hash: bytes
    raw: bytes


class Tables:
    """The SQLite file of one node's ledger (see the module docstring)."""

    def __init__(self, path: str, params: NetworkParams) -> None:
        """Open (creating) the file for ``params``. Raises StoreError if it is unreadable,
        corrupt, made for other params or by another schema version."""
        self.path = path
        self.params = params
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open ledger store {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._init_meta()
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"ledger store {path}: {exc}") from exc
        except StoreError:
            self._db.close()
            raise

    def _init_meta(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        row = self._db.execute("SELECT value FROM meta WHERE key='params'").fetchone()
        if row is None:
            with self.tx():
                self._db.execute("INSERT INTO meta VALUES ('params', ?)", (self.params.encode(),))
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION).encode(),))
            return
        schema = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        version = bytes(schema[0]).decode(errors="replace") if schema is not None else "?"
        if version != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path} was written by another p2pserve version (ledger schema {version}, this one reads "
                f"{SCHEMA_VERSION}); move it away (the network's copy of your chain is pulled again on start)"
            )
        try:
            stored = decode(bytes(row[0]), expect=NetworkParams)
        except MalformedMessage as exc:
            raise StoreError(f"{self.path}: unreadable network params: {exc}") from exc
        if stored != self.params:
            raise StoreError(f"{self.path} belongs to network {stored!r}, not {self.params!r}")

    # --- transactions ------------------------------------------------------------------------

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One transaction; inside another (a batch) it joins that one."""
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
    def batch(self, on_rollback: Callable[[], None]) -> Iterator[None]:
        """One durable transaction around several writes; on any failure it is rolled back
        and ``on_rollback`` runs (the caller rebuilds its state from the file); an SQLite
        failure is raised as StoreError. Inside another batch it joins that one."""
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
                on_rollback()
            except (sqlite3.Error, StoreError):
                pass
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write to {self.path}: {exc}") from exc
            raise

    # --- writes (inside a batch) -------------------------------------------------------------

    def insert_block(self, p: Prepared) -> None:
        self._db.execute(
            "INSERT INTO blocks (account, height, hash, raw) VALUES (?, ?, ?, ?)",
            (p.block.account, p.block.height, p.hash, p.block.encode()),
        )

    def replace_blocks(self, blocks: Sequence[Prepared]) -> None:
        """Make ``blocks`` hold exactly ``blocks``, in this order."""
        self._db.execute("DELETE FROM blocks")
        self._db.executemany(
            "INSERT INTO blocks (account, height, hash, raw) VALUES (?, ?, ?, ?)",
            [(p.block.account, p.block.height, p.hash, p.block.encode()) for p in blocks],
        )

    def delete_chain_from(self, account: str, height: int) -> list[bytes]:
        """Delete ``account``'s blocks at ``height`` and above; their raw bytes, lowest first."""
        rows = self._db.execute(
            "SELECT raw FROM blocks WHERE account = ? AND height >= ? ORDER BY height", (account, height)
        ).fetchall()
        self._db.execute("DELETE FROM blocks WHERE account = ? AND height >= ?", (account, height))
        return [bytes(r[0]) for r in rows]

    def insert_side(self, p: Prepared, max_per_account: int) -> bool:
        """Keep an off-choice block (at most ``max_per_account`` per account); False if full."""
        (n,) = self._db.execute("SELECT COUNT(*) FROM side WHERE account = ?", (p.block.account,)).fetchone()
        if n >= max_per_account:
            return False
        self._db.execute(
            "INSERT OR IGNORE INTO side VALUES (?, ?, ?, ?)", (p.hash, p.block.account, p.block.height, p.block.encode())
        )
        return True

    def clear_side(self) -> None:
        self._db.execute("DELETE FROM side")

    def put_proof(self, account: str, raw: bytes) -> None:
        """Keep ``account``'s proof (replacing the one kept)."""
        try:
            self._db.execute("INSERT OR REPLACE INTO proofs VALUES (?, ?)", (account, raw))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store proof in {self.path}: {exc}") from exc

    # --- reads -------------------------------------------------------------------------------

    def rows(self) -> Iterator[StoredRow]:
        """Every stored block row in acceptance order (raw bytes, unchecked)."""
        try:
            cur = self._db.execute("SELECT seq, account, height, hash, raw FROM blocks ORDER BY seq")
            for seq, account, height, h, raw in cur:
                yield StoredRow(seq, account, height, bytes(h), bytes(raw))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def side_raws(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._all("SELECT raw FROM side ORDER BY account, height, hash")]

    def proof_raws(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._all("SELECT raw FROM proofs ORDER BY account")]

    def block_at(self, account: str, height: int) -> Block | None:
        return self._block("SELECT raw FROM blocks WHERE account = ? AND height = ?", (account, height))

    def get(self, block_hash: bytes) -> Block | None:
        return self._block("SELECT raw FROM blocks WHERE hash = ?", (block_hash,))

    def side_block(self, block_hash: bytes) -> Block | None:
        return self._block("SELECT raw FROM side WHERE hash = ?", (block_hash,))

    def blocks_after(self, account: str, height: int, limit: int) -> list[Block]:
        """Up to ``limit`` blocks of ``account`` above ``height``, in order."""
        rows = self._all(
            "SELECT raw FROM blocks WHERE account = ? AND height > ? ORDER BY height LIMIT ?", (account, height, limit)
        )
        return [self._decode(bytes(r[0])) for r in rows]

    def chains_above(self, above: Mapping[str, int]) -> list[bytes]:
        """Raw blocks of each account above its height in ``above``, in acceptance order
        (indexed by account: only the chains asked for are read)."""
        wanted: list[tuple[int, bytes]] = []
        for account, height in above.items():
            wanted += self._all("SELECT seq, raw FROM blocks WHERE account = ? AND height > ?", (account, height))
        wanted.sort()
        return [bytes(raw) for _, raw in wanted]

    def raws_by_hash(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Raw blocks (applied or on the side) with these hashes, those we have."""
        out = []
        for h in hashes:
            row = self._one("SELECT raw FROM blocks WHERE hash = ?", (h,)) or self._one("SELECT raw FROM side WHERE hash = ?", (h,))
            if row is not None:
                out.append(bytes(row[0]))
        return out

    def count(self) -> int:
        return int(self._one("SELECT COUNT(*) FROM blocks")[0])

    def _block(self, sql: str, args: tuple[object, ...]) -> Block | None:
        row = self._one(sql, args)
        return None if row is None else self._decode(bytes(row[0]))

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> Any:
        try:
            return self._db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
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
