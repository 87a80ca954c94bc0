"""Audit: a valid ledger exits 0 with a summary; any flipped byte in any stored block, a
forged claim, a double claim, a replayed block, a wrong-key block, a fork in the block stream
and a tampered equivocation proof are each reported (account, height, hash, reason) with
exit 1. A valid stored equivocation proof is someone else's offence, not corrupt data: it is
reported in its own section and exits 0 (1 with --strict)."""

from __future__ import annotations

import dataclasses
import json
import random
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from p2pserve.cli.audit import run_audit
from p2pserve.ledger import audit, rules
from p2pserve.ledger.blocks import Block, ClaimBody, EquivocationProof, StakeBody, UnstakeBody
from p2pserve.ledger.store import DB_NAME, LedgerStore
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, World


def make_db(tmp_path: Path, seed: int = 1, steps: int = 40) -> tuple[World, Path]:
    w = World(random.Random(seed))
    names = ["a", "b", "c"]
    for n in names:
        w.open(n, staked=CREDIT)
    for _ in range(steps):
        w.random_step(names)
    s = LedgerStore.in_data_dir(tmp_path, TEST_PARAMS)
    s.append_many(w.log)
    s.close()
    return w, tmp_path / DB_NAME


def insert_raw(path: Path, block: Block) -> None:
    """Write a block straight into the file, bypassing the rules (what an attacker would do)."""
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO blocks (account, height, hash, raw) VALUES (?, ?, ?, ?)",
        (block.account, block.height, block.digest(), block.encode()),
    )
    db.commit()
    db.close()


def reasons(report: audit.AuditReport) -> list[tuple[str, int | None, str]]:
    return [(p.account, p.height, p.reason) for p in report.problems]


def test_valid_ledger_exits_0_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w, path = make_db(tmp_path)
    report = audit.run(data_dir=tmp_path)
    assert report.ok and report.blocks == len(w.log)
    assert rules.fingerprint(report.state) == rules.fingerprint(w.state)
    console = Console(width=200, force_terminal=False)
    assert run_audit(data_dir=tmp_path, console=console) == 0
    out = capsys.readouterr().out
    assert "supply" in out and w.id("a") in out
    assert run_audit(db=path, json_out=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["blocks"] == len(w.log) and data["accounts"] == 3
    assert data["totals"]["supply"] == 3 * TEST_PARAMS.initial_credit


def test_unreadable_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_audit(db=tmp_path / "missing.sqlite3") == 2
    assert "error" in capsys.readouterr().err


def test_every_flipped_byte_is_caught_and_names_its_block(tmp_path: Path) -> None:
    w = World(random.Random(3))
    w.open("a", staked=CREDIT)
    w.open("b")
    w.claim("b", w.pay("a", "b", CREDIT), CREDIT)
    w.stake("b", CREDIT)
    w.unstake("a", CREDIT)
    s = LedgerStore.in_data_dir(tmp_path, TEST_PARAMS)
    s.append_many(w.log)
    s.close()
    path = tmp_path / DB_NAME
    base = audit.load_db(path)
    records = list(base.records)
    assert audit.audit(base).ok and len(records) == 6
    rng = random.Random(5)
    for i, rec in enumerate(records):  # every byte of every kind of stored block
        for pos in range(len(rec.raw)):
            flipped = bytearray(rec.raw)
            flipped[pos] ^= 1 << rng.randrange(8)
            recs = list(records)
            recs[i] = audit.Record(bytes(flipped), rec.account, rec.height, rec.hash)
            report = audit.audit(audit.AuditSource(TEST_PARAMS, recs))
            first = report.problems[0]
            assert (first.account, first.height, first.block_hash) == (rec.account, rec.height, rec.hash), (pos, first)
    db = sqlite3.connect(path)
    rows = [(seq, acc, h, bytes(hs), bytes(raw)) for seq, acc, h, hs, raw in
            db.execute("SELECT seq, account, height, hash, raw FROM blocks")]
    db.close()
    # and once through the real file and the CLI: flip one byte of the hash column too
    seq, acc, height, h, raw = rows[len(rows) // 2]
    db = sqlite3.connect(path)
    db.execute("UPDATE blocks SET hash = ? WHERE seq = ?", (bytes([h[0] ^ 0x10]) + h[1:], seq))
    db.commit()
    db.close()
    report = audit.run(db=path)
    assert reasons(report)[0] == (acc, height, "hash-mismatch")
    assert run_audit(db=path) == 1


def test_flipped_byte_in_file_names_the_block_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w, path = make_db(tmp_path, steps=30)
    db = sqlite3.connect(path)
    seq, acc, height, h, raw = db.execute("SELECT seq, account, height, hash, raw FROM blocks WHERE seq = 12").fetchone()
    raw = bytearray(raw)
    raw[len(raw) // 3] ^= 0x04
    db.execute("UPDATE blocks SET raw = ? WHERE seq = ?", (bytes(raw), seq))
    db.commit()
    db.close()
    assert run_audit(data_dir=tmp_path) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{acc} {height} {bytes(h).hex()}")
    later = [ln for ln in lines[1:] if "unreachable" in ln]
    assert all(ln.startswith(acc) for ln in later)


def test_forged_and_double_claims_wrong_key_and_replay(tmp_path: Path) -> None:
    w, path = make_db(tmp_path, steps=5)
    pay = w.pay("a", "b", CREDIT)
    claim = w.claim("b", pay, CREDIT)
    insert_raw(path, pay)
    insert_raw(path, claim)
    double = w.block("b", w.claim_body(pay, CREDIT))
    insert_raw(path, double)
    forged = w.block("c", ClaimBody(w.id("a"), 3, b"\x09" * 32, CREDIT))
    insert_raw(path, forged)
    report = audit.run(db=path)
    got = reasons(report)
    assert (w.id("b"), double.height, "double-claim") in got
    assert (w.id("c"), forged.height, "unknown-pay") in got

    # a block signed by the wrong key, and a replay (only possible in a raw stream)
    src = audit.load_db(path)
    good = w.block("a", StakeBody(1))
    wrong = Block(*[getattr(good, f) for f in Block._names[:-1]], w.signer("b").sign(good.signing_bytes()))
    recs = [*src.records, audit.Record(w.log[3].encode()), audit.Record(wrong.encode())]
    report = audit.audit(audit.AuditSource(TEST_PARAMS, recs, src.proofs))
    got = reasons(report)
    assert (w.log[3].account, w.log[3].height, "duplicate") in got
    assert (w.id("a"), good.height, "bad-signature") in got


def make_equivocation(tmp_path: Path) -> tuple[World, Path, Block, Block]:
    """A ledger file in which account a signed two blocks at one height (stored as a proof)."""
    w, path = make_db(tmp_path, steps=5)
    s = LedgerStore(path, TEST_PARAMS)
    fork_state = w.state.copy()
    first = w.add(w.block("a", StakeBody(1)))
    s.append(first)
    second = rules.next_block(w.signer("a"), fork_state, UnstakeBody(1), w.now_ms + 1)
    s.ingest([second], now_ms=w.now_ms)
    s.close()
    return w, path, first, second


def offences(report: audit.AuditReport) -> list[tuple[str, int | None, str]]:
    return [(p.account, p.height, p.reason) for p in report.offences]


def test_equivocation_is_an_offence_not_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w, path, first, second = make_equivocation(tmp_path)
    report = audit.run(db=path)
    assert report.ok and reasons(report) == []
    assert offences(report) == [(w.id("a"), first.height, "equivocation")]
    assert report.state.is_frozen(w.id("a"))
    # text: the summary, then the offences section; exit 0, or 1 with --strict
    assert run_audit(db=path, console=Console(width=200, force_terminal=False)) == 0
    out = capsys.readouterr().out
    summary_at, offences_at = out.index("fingerprint"), out.index("offences: 1")
    assert summary_at < offences_at
    assert f"{w.id('a')} {first.height} {second.digest().hex()} equivocation" in out[offences_at:]
    assert run_audit(db=path, strict=True, console=Console(width=200, force_terminal=False)) == 1
    capsys.readouterr()
    # JSON: its own list, not in "problems"
    assert run_audit(db=path, json_out=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["problems"] == []
    assert [(o["account"], o["height"], o["reason"]) for o in data["offences"]] == offences(report)
    assert run_audit(db=path, json_out=True, strict=True) == 1


def test_a_fork_in_the_block_stream_and_a_tampered_proof_are_problems(tmp_path: Path) -> None:
    w, path, first, second = make_equivocation(tmp_path)
    src = audit.load_db(path)
    # both branches in the block stream (two blocks at one height) are caught by the replay:
    # a store keeps at most one of them among its blocks (the rest are side blocks), so this
    # data is inconsistent. Which branch the store kept does not matter here.
    kept = [r for r in src.records if not (r.account == w.id("a") and r.height is not None and r.height >= first.height)]
    forked = [*kept, audit.Record(first.encode()), audit.Record(second.encode())]
    report = audit.audit(audit.AuditSource(TEST_PARAMS, forked))
    assert (w.id("a"), second.height, "equivocation") in reasons(report) and not report.ok
    # a proof whose signature no longer verifies proves nothing: corrupt data, exit 1
    (raw,) = src.proofs
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    report = audit.audit(audit.AuditSource(TEST_PARAMS, list(src.records), [tampered]))
    assert reasons(report)[0] == (w.id("a"), first.height, "bad-proof") and report.offences == []
    report = audit.audit(audit.AuditSource(TEST_PARAMS, list(src.records), [b"\x00junk"]))
    assert reasons(report)[0] == ("?", None, "bad-proof")
    # a valid proof about another network's account proves nothing here
    other = World(random.Random(7), params=dataclasses.replace(TEST_PARAMS, network_id="othernet"))
    other.open("x")
    fork_state = other.state.copy()
    one = other.add(other.block("x", StakeBody(1)))
    two = rules.next_block(other.signer("x"), fork_state, UnstakeBody(1), other.now_ms + 1)
    alien = EquivocationProof(one, two).encode()
    report = audit.audit(audit.AuditSource(TEST_PARAMS, list(src.records), [*src.proofs, alien]))
    assert reasons(report) == [(other.id("x"), one.height, "wrong-network")] and len(report.offences) == 1
    db = sqlite3.connect(path)
    db.execute("UPDATE proofs SET raw = ?", (tampered,))
    db.commit()
    db.close()
    assert run_audit(db=path) == 1


def test_api_stream_round_trip() -> None:
    w = World(random.Random(9))
    for n in ("a", "b"):
        w.open(n)
    w.claim("b", w.pay("a", "b", CREDIT), CREDIT)
    data = b"".join(audit.encode_stream(TEST_PARAMS, [b.encode() for b in w.log]))
    report = audit.audit(audit.parse_frames(data))
    assert report.ok and report.blocks == 4
    with pytest.raises(Exception):
        audit.parse_frames(data[:-1])
