"""Ledger store: durable appends, restart with the chain intact, equivocation proofs kept,
out-of-order blocks held pending (bounded) until the gap fills. The store-level tests run
against both the file and the in-memory variant (a small conformance suite)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pserve.errors import InvalidBlock, StoreError
from p2pserve.ledger import rules
from p2pserve.ledger.blocks import StakeBody, UnstakeBody
from p2pserve.ledger.rules import fingerprint
from p2pserve.ledger.store import DB_NAME, LedgerStore
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, World


def history(seed: int = 1, steps: int = 40) -> World:
    w = World(random.Random(seed))
    names = ["a", "b", "c"]
    for n in names:
        w.open(n, staked=CREDIT)
    for _ in range(steps):
        w.random_step(names)
    return w


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    path = tmp_path / DB_NAME if request.param == "file" else ":memory:"
    s = LedgerStore(path, TEST_PARAMS)
    yield s
    s.close()


def test_append_builds_the_same_state_as_the_rules(store: LedgerStore) -> None:
    w = history()
    for b in w.log:
        store.append(b)
    assert fingerprint(store.state) == fingerprint(w.state)
    assert store.count() == len(w.log)
    assert store.heads() == w.state.heads()
    a = w.id("a")
    chain = store.blocks_after(a, -1, 1000)
    assert [b.height for b in chain] == list(range(len(chain)))
    assert store.blocks_after(a, 0, 2) == chain[1:3]
    assert store.block_at(a, 0) == chain[0] and store.get(chain[0].digest()) == chain[0]
    assert store.get(b"\x00" * 32) is None


def test_invalid_block_is_not_stored(store: LedgerStore) -> None:
    w = history(steps=5)
    for b in w.log:
        store.append(b)
    before = fingerprint(store.state)
    with pytest.raises(InvalidBlock) as info:
        store.append(w.block("a", StakeBody(10**15)))
    assert info.value.reason == "insufficient-funds"
    with pytest.raises(InvalidBlock):
        store.append(w.log[-1])
    assert fingerprint(store.state) == before and store.count() == len(w.log)


def test_append_many_keeps_the_valid_prefix(store: LedgerStore) -> None:
    w = history(steps=10)
    bad = dataclasses.replace(w.block("a", StakeBody(1)), signature=b"\x00" * 64)
    with pytest.raises(InvalidBlock):
        store.append_many([*w.log, bad])
    assert fingerprint(store.state) == fingerprint(w.state)


def test_equivocation_is_proven_kept_and_freezes(store: LedgerStore) -> None:
    w = history(steps=5)
    for b in w.log:
        store.append(b)
    fork_state = w.state.copy()
    first = w.add(w.block("a", StakeBody(1)))
    store.append(first)
    second = rules.next_block(w.signer("a"), fork_state, UnstakeBody(1), w.now_ms + 1)
    res = store.ingest([second], now_ms=w.now_ms)
    assert [r for _, r in res.rejected] == ["equivocation"] and len(res.proofs) == 1
    assert store.state.is_frozen(w.id("a"))
    assert len(store.proof_rows()) == 1
    assert store.add_proof(res.proofs[0]) is False


def test_ingest_holds_gaps_pending_until_they_fill(store: LedgerStore) -> None:
    w = history(seed=2, steps=40)
    blocks = list(reversed(w.log))  # worst order: every block arrives before its predecessor
    res = store.ingest(blocks[:-3], now_ms=w.now_ms)
    assert res.applied == [] and store.pending_count() == len(blocks) - 3
    assert store.missing()  # it knows which chains to ask for
    res = store.ingest(blocks[-3:], now_ms=w.now_ms)
    assert store.pending_count() == 0
    assert fingerprint(store.state) == fingerprint(w.state)
    assert len(res.applied) == len(blocks)


def test_pending_is_bounded(tmp_path: Path) -> None:
    w = history(seed=3, steps=30)
    s = LedgerStore(tmp_path / DB_NAME, TEST_PARAMS, max_pending=5)
    s.ingest([b for b in w.log if b.height > 0], now_ms=w.now_ms)
    assert s.pending_count() == 5
    s.close()


def test_restart_resumes_with_the_chain_intact(tmp_path: Path) -> None:
    w = history(seed=4, steps=60)
    s = LedgerStore.in_data_dir(tmp_path, TEST_PARAMS)
    for b in w.log[:30]:
        s.append(b)
    s.append_many(w.log[30:])
    fp = fingerprint(s.state)
    s.close()
    s.close()  # idempotent
    again = LedgerStore.in_data_dir(tmp_path, TEST_PARAMS)
    assert fingerprint(again.state) == fp == fingerprint(w.state)
    again.append(w.block("a", StakeBody(1)))  # and it keeps going
    again.close()


def test_store_refuses_another_network_and_corruption(tmp_path: Path) -> None:
    w = history(steps=3)
    path = tmp_path / DB_NAME
    s = LedgerStore(path, TEST_PARAMS)
    for b in w.log:
        s.append(b)
    s.close()
    with pytest.raises(StoreError):
        LedgerStore(path, dataclasses.replace(TEST_PARAMS, network_id="other"))
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("UPDATE blocks SET raw = substr(raw, 1, 20) WHERE seq = 2")
    db.commit()
    db.close()
    with pytest.raises(StoreError):
        LedgerStore(path, TEST_PARAMS)
    (tmp_path / "notadb").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError):
        LedgerStore(tmp_path / "notadb", TEST_PARAMS)


def test_a_flood_of_gap_blocks_from_one_key_evicts_only_that_key_and_costs_no_rescan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 7, item 10: filling ``pending`` with 4,096 height-gap blocks (never expired,
    kept across restarts) made every node re-verify all of them on each new block (ask
    latency 0.03 -> 1.5 s). Pending is now per-account bounded, expiring, in memory, and
    indexed by what each block waits for: applying a block retries only its dependents."""
    w = history(seed=5, steps=20)
    store = LedgerStore(":memory:", TEST_PARAMS, max_pending_per_account=256)
    for b in w.log:
        store.append(b)
    honest_gap = w.block("a", StakeBody(1))
    honest_next = rules.next_block(w.signer("a"), rules.apply(honest_gap, w.state.copy()), StakeBody(1), w.now_ms + 5)
    store.ingest([honest_next], now_ms=w.now_ms)  # waits for honest_gap
    flood = World(random.Random(9))
    flood.open("mallory")
    gaps = []
    for _ in range(300):  # a chain the store has never seen the open of: every block waits
        gaps.append(flood.stake("mallory", 1) if flood.state.account(flood.id("mallory")).free else None)  # type: ignore[union-attr]
    store.ingest([g for g in gaps if g is not None], now_ms=w.now_ms)
    assert store.pending_count() == 257  # 256 of the flooding key, the honest block kept
    calls = 0
    real = rules.plan

    def counting(*a: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rules, "plan", counting)
    res = store.ingest([honest_gap], now_ms=w.now_ms)
    assert [b.digest() for b in res.applied] == [honest_gap.digest(), honest_next.digest()]
    assert calls == 2  # the block and its one dependent: nothing rescanned
    monkeypatch.undo()
    assert store.retry_timed(w.now_ms + store.pending.ttl_ms + 1).applied == []
    assert store.pending_count() == 0  # expired
    store.close()


def test_pending_does_not_survive_a_restart(tmp_path: Path) -> None:
    w = history(seed=6, steps=10)
    s = LedgerStore(tmp_path / DB_NAME, TEST_PARAMS)
    s.ingest([b for b in w.log if b.height > 0], now_ms=w.now_ms)
    assert s.pending_count() > 0
    s.close()
    again = LedgerStore(tmp_path / DB_NAME, TEST_PARAMS)
    assert again.pending_count() == 0 and again.count() == 0  # sync fetches it all again
    again.close()


def test_a_node_online_longer_than_the_delay_holds_a_backdated_unstake_to_its_own_clock() -> None:
    """Issue 7, item 4 (the neighbour of future-dating): an idle account dates its unstake
    back to its last block. A node that has been online longer than the delay holds the
    release until its own clock is the delay past when it first saw the unstake; a node
    still catching up (online for less than the delay) does not hold honest old history."""
    from p2pserve.ledger.pending import UnstakeWatch

    p = TEST_PARAMS
    old = UnstakeWatch(p)
    old.applied(0)
    now = p.unbonding_delay_ms + p.max_clock_skew_ms + 1
    old.seen(b"u1", timestamp_ms=now - 10 * p.unbonding_delay_ms, now_ms=now)  # dated far back
    assert old.not_before(b"u1") == now + p.unbonding_delay_ms
    old.seen(b"u2", timestamp_ms=now - 1, now_ms=now)  # fresh: the rules' own release applies
    assert old.not_before(b"u2") is None
    young = UnstakeWatch(p)
    young.applied(now)
    young.seen(b"u1", timestamp_ms=now - 10 * p.unbonding_delay_ms, now_ms=now + 1)
    assert young.not_before(b"u1") is None
