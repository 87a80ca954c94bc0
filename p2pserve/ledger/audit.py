"""Audit: replay every stored block from its raw bytes and report every problem.

Owns the replay used by ``p2pserve audit``. Unlike the store (which trusts what it
wrote), the audit trusts nothing: each block is re-decoded from its raw bytes (canonical
encoding required), re-hashed and compared with the stored hash, account and height
columns, its signature and every receipt it cites are verified, and the whole history (the
off-choice blocks of frozen accounts included) is replayed through
:func:`p2pserve.ledger.forks.replay` (links, heights, timestamps, claims, balances, fork
choices), then the supply invariants are re-checked and stored equivocation proofs
verified. It does not stop at the first problem: each problem is one
:class:`Problem` (account, height, block hash, reason), and blocks that follow an invalid
one on the same chain are reported as ``unreachable``.

Problems and offences are kept apart. A *problem* means this data is corrupt or
inconsistent (bad signature, broken link, supply mismatch, an undecodable proof, ...). An
*offence* is a valid stored equivocation proof: the data is fine, it records that someone
else signed two blocks at one height (that account is frozen). ``AuditReport.ok`` looks at
problems only.

One flipped byte anywhere in a stored block is always caught: in the raw bytes it breaks
the canonical decode, a signature, or the hash match against the stored hash column; in
a column it breaks the match against the raw bytes.

Sources: a data dir / SQLite file (read-only), or a node's HTTP API
(``GET {api}/p2pserve/ledger/blocks``, ``application/octet-stream``: uvarint-length-prefixed
frames, the first a NetworkParams message, then Block and EquivocationProof messages).

Comparing nodes (``p2pserve audit --compare``) lives in :mod:`p2pserve.ledger.compare`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pserve.crypto import sha256
from p2pserve.duel.ratings import Rating, bradley_terry
from p2pserve.errors import InvalidBlock, MalformedMessage, StoreError
from p2pserve.ledger import forks, rules
from p2pserve.ledger.blocks import EquivocationProof, NetworkParams, decode_block
from p2pserve.ledger.rules import Prepared
from p2pserve.ledger.state import LedgerState
from p2pserve.ledger.store import LedgerStore
from p2pserve.wire.codec import Message, decode
from p2pserve.wire.framing import FrameDecoder

__all__ = [
    "AUDIT_REASONS",
    "AuditReport",
    "AuditSource",
    "Problem",
    "Record",
    "audit",
    "load_api",
    "load_db",
    "run",
]

BLOCKS_PATH = "/p2pserve/ledger/blocks"
AUDIT_REASONS: dict[str, str] = {
    "hash-mismatch": "the stored hash column differs from the hash of the stored bytes",
    "row-mismatch": "the stored account/height columns differ from the block's",
    "unreachable": "the block follows an invalid or missing block on its chain",
    "invariant": "a ledger invariant (supply, balances) fails after replay",
}
"""Reasons only the audit reports, in addition to ``rules.REASONS``."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong, located as precisely as the data allows."""

    account: str
    height: int | None
    block_hash: bytes | None
    reason: str
    detail: str = ""

    def line(self) -> str:
        h = "-" if self.height is None else str(self.height)
        bh = self.block_hash.hex() if self.block_hash is not None else "-"
        return f"{self.account} {h} {bh} {self.reason}" + (f": {self.detail}" if self.detail else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "height": self.height,
            "hash": None if self.block_hash is None else self.block_hash.hex(),
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Record:
    """One stored block: raw bytes plus whatever index columns the source keeps."""

    raw: bytes
    account: str | None = None
    height: int | None = None
    hash: bytes | None = None


@dataclass(slots=True)
class AuditSource:
    """Everything an audit replays."""

    params: NetworkParams
    records: Iterable[Record]
    proofs: list[bytes] = field(default_factory=list)
    label: str = ""


@dataclass(slots=True)
class AuditReport:
    """The outcome: problems (empty when the data is valid), offences (valid equivocation
    proofs: other accounts' misbehaviour the data records) and the replayed state's summary."""

    params: NetworkParams
    blocks: int
    state: LedgerState
    problems: list[Problem]
    label: str = ""
    offences: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The data is intact (offences recorded in it do not count)."""
        return not self.problems

    def balances(self) -> list[dict[str, Any]]:
        out = []
        for acct in self.state.accounts():
            v = self.state.account(acct)
            assert v is not None
            owed = sum(c.amount for c in self.state.unclaimed_for(acct))
            out.append(
                {
                    "account": acct,
                    "height": v.height,
                    "free": v.free,
                    "staked": v.staked,
                    "unbonding": v.unbonding_total,
                    "unclaimed": owed,
                    "stake_weight": self.state.stake_of(acct),
                    "frozen": v.frozen,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.label,
            "network_id": self.params.network_id,
            "blocks": self.blocks,
            "accounts": len(self.state.accounts()),
            "totals": self.state.totals(),
            "fingerprint": rules.fingerprint(self.state).hex(),
            "balances": self.balances(),
            "problems": [p.to_json() for p in self.problems],
            "offences": [p.to_json() for p in self.offences],
            "verdicts": self.state.verdict_count(),
            "void_orders": [o.hex() for o in self.state.void_orders()],
            "ratings": {peer: r.as_dict() for peer, r in sorted(self.ratings().items())},
        }

    def ratings(self) -> dict[str, Rating]:
        """The executors' Bradley-Terry ratings from the counted verdicts (what every node shows)."""
        return bradley_terry((v.a, v.b, v.outcome) for v in self.state.verdicts())


def audit(source: AuditSource) -> AuditReport:
    """Replay ``source`` and report every problem (pure: no I/O).

    The replay is :func:`p2pserve.ledger.forks.replay` over every block the source holds
    (its off-choice blocks of frozen accounts included), with every signature verified, so
    the state and fingerprint are those every node holding these blocks computes."""
    params = source.params
    problems: list[Problem] = []
    prepared: list[Prepared] = []
    blocks = 0
    seen: set[bytes] = set()
    for rec in source.records:
        blocks += 1
        p = _checked(rec, problems)
        if p is None:
            continue
        if p.hash in seen:  # only possible in a raw stream: a store keeps each block once
            problems.append(Problem(p.block.account, p.block.height, p.hash, "duplicate", "the block appears twice"))
            continue
        seen.add(p.hash)
        prepared.append(p)
    proofs, offences = _proofs(source.proofs, params, problems)
    res = forks.replay(params, prepared, proofs, verify=True)
    first_bad: dict[str, int] = {}
    for p, exc in res.rejected:
        b = p.block
        problems.append(Problem(b.account, b.height, p.hash, exc.reason, exc.detail))
        first_bad[b.account] = min(first_bad.get(b.account, b.height), b.height)
    for p, exc in res.waiting:
        b = p.block
        if b.account in first_bad and first_bad[b.account] < b.height:
            problems.append(Problem(b.account, b.height, p.hash, "unreachable",
                                    f"follows the invalid block at height {first_bad[b.account]}"))
        else:
            problems.append(Problem(b.account, b.height, p.hash, exc.reason, "never resolved"))
    for sentence in rules.invariant_violations(res.state):
        problems.append(Problem("-", None, None, "invariant", sentence))
    return AuditReport(params, blocks, res.state, problems, source.label, offences)


def _checked(rec: Record, problems: list[Problem]) -> Prepared | None:
    """The record's block, if it decodes canonically and matches its stored columns."""
    fallback_hash = rec.hash if rec.hash is not None else sha256(rec.raw)
    try:
        block = decode_block(rec.raw)
        p = rules.prepare(block, rec.raw)
    except (MalformedMessage, InvalidBlock) as exc:
        problems.append(Problem(rec.account or "?", rec.height, fallback_hash, "malformed", str(exc)))
        return None
    # locate problems by the stored columns when there are any: they name the row
    where_account = rec.account if rec.account is not None else block.account
    where_height = rec.height if rec.height is not None else block.height
    if rec.hash is not None and rec.hash != p.hash:
        problems.append(Problem(where_account, where_height, rec.hash, "hash-mismatch", f"bytes hash to {p.hash.hex()}"))
        return None
    if (where_account, where_height) != (block.account, block.height):
        detail = f"the block says {block.account} height {block.height}"
        problems.append(Problem(where_account, where_height, p.hash, "row-mismatch", detail))
        return None
    return p


def _proofs(
    raws: Iterable[bytes], params: NetworkParams, problems: list[Problem]
) -> tuple[list[EquivocationProof], list[Problem]]:
    """Valid proofs (each an offence found) and, into ``problems``, the invalid ones."""
    state = LedgerState.genesis(params)
    proofs: list[EquivocationProof] = []
    offences: list[Problem] = []
    for raw in raws:
        try:
            proof = decode(raw, expect=EquivocationProof)
        except MalformedMessage as exc:
            problems.append(Problem("?", None, sha256(raw), "bad-proof", str(exc)))
            continue
        try:
            rules.verify_proof(proof, state)  # bad-proof, wrong-network
        except InvalidBlock as exc:
            problems.append(Problem(proof.account, proof.height, sha256(raw), exc.reason, exc.detail))
            continue
        proofs.append(proof)
        detail = f"blocks {proof.first.digest().hex()} and {proof.second.digest().hex()}"
        offences.append(Problem(proof.account, proof.height, proof.second.digest(), "equivocation", detail))
    return proofs, offences


# --- sources ---------------------------------------------------------------------------------


def from_store(store: LedgerStore) -> AuditSource:
    """Everything an open store holds (its chains, the off-choice blocks of frozen accounts,
    the equivocation proofs), as ``audit`` reads it: a running node audits its own copy."""
    records = [Record(r.raw, r.account, r.height, r.hash) for r in store.rows()]
    records += [Record(raw) for raw in store.side_rows()]
    return AuditSource(store.params, records, store.proof_rows(), label=str(store.path))


def load_db(path: Path | str) -> AuditSource:
    """Read a ledger SQLite file read-only. Raises StoreError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no ledger file at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        row = db.execute("SELECT value FROM meta WHERE key='params'").fetchone()
        if row is None:
            raise StoreError(f"{path} has no network params")
        try:
            params = decode(bytes(row[0]), expect=NetworkParams)
        except MalformedMessage as exc:
            raise StoreError(f"{path}: unreadable network params: {exc}") from exc
        rows = db.execute("SELECT account, height, hash, raw FROM blocks ORDER BY seq").fetchall()
        rows += db.execute("SELECT account, height, hash, raw FROM side ORDER BY account, height, hash").fetchall()
        proofs = [bytes(r[0]) for r in db.execute("SELECT raw FROM proofs ORDER BY account")]
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc
    finally:
        db.close()
    records = [
        Record(bytes(raw), account if isinstance(account, str) else None, height if isinstance(height, int) else None, _bytes(h))
        for account, height, h, raw in rows
    ]
    return AuditSource(params, records, proofs, str(path))


def _bytes(v: object) -> bytes | None:
    return bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else None


def parse_frames(data: bytes, max_frame: int = 1 << 20) -> AuditSource:
    """Parse the API's octet stream (see the module doc). Raises MalformedMessage."""
    dec = FrameDecoder(max_frame)
    dec.feed(data)
    frames: list[bytes] = []
    while (f := dec.next_frame()) is not None:
        frames.append(f)
    if dec.buffered:
        raise MalformedMessage("the block stream ends inside a frame")
    if not frames:
        raise MalformedMessage("the block stream is empty (no network params)")
    params = decode(frames[0], expect=NetworkParams)
    records: list[Record] = []
    proofs: list[bytes] = []
    for f in frames[1:]:
        if _tag(f) == EquivocationProof.TAG:
            proofs.append(f)
        else:
            records.append(Record(f))
    return AuditSource(params, records, proofs)


def _tag(frame: bytes) -> int | None:
    try:
        msg: Message = decode(frame)
    except MalformedMessage:
        return None
    return msg.TAG


def load_api(url: str, api_key: str | None = None, timeout: float = 60.0) -> AuditSource:
    """Fetch every block from a node's API. Raises StoreError on any failure."""
    content = api_get(url, BLOCKS_PATH, "application/octet-stream", api_key, timeout)
    try:
        source = parse_frames(content)
    except MalformedMessage as exc:
        raise StoreError(f"{url.rstrip('/')}{BLOCKS_PATH}: bad block stream: {exc}") from exc
    source.label = url.rstrip("/") + BLOCKS_PATH
    return source


def api_get(url: str, path: str, accept: str, api_key: str | None, timeout: float) -> bytes:
    """The body of ``GET url+path`` from a node's API (bearer ``api_key`` if given).
    Raises StoreError on any failure."""
    import httpx

    headers = {"Accept": accept}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    target = url.rstrip("/") + path
    try:
        resp = httpx.get(target, headers=headers, timeout=timeout)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise StoreError(f"cannot fetch {target}: {exc}") from exc
    return resp.content


def encode_stream(params: NetworkParams, raws: Iterable[bytes]) -> Iterator[bytes]:
    """Frames for the API endpoint: params first, then each block/proof (used by ``p2pserve.api.ledger``)."""
    from p2pserve.wire.framing import encode_frame

    yield encode_frame(params.encode())
    for raw in raws:
        yield encode_frame(raw)


def run(
    *,
    data_dir: Path | str | None = None,
    db: Path | str | None = None,
    api: str | None = None,
    api_key: str | None = None,
) -> AuditReport:
    """Load one source (exactly one of the three) and audit it. Raises StoreError."""
    chosen = [x for x in (data_dir, db, api) if x is not None]
    if len(chosen) != 1:
        raise StoreError("give exactly one of --data-dir, --db, --api")
    if api is not None:
        source = load_api(api, api_key)
    else:
        from p2pserve.ledger.store import DB_NAME

        path = Path(db) if db is not None else Path(str(data_dir)) / DB_NAME
        source = load_db(path)
    return audit(source)
