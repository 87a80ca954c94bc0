"""Ledger rules: every rejection has its reason; random valid histories keep every invariant;
every single-field mutation and every flipped byte of a valid block is rejected."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pserve.crypto import sha256
from p2pserve.errors import InvalidBlock, LedgerError, LocalProtocolError, MalformedMessage
from p2pserve.ledger import rules
from p2pserve.ledger.blocks import (
    MAX_BODY,
    MAX_RECEIPTS_PER_PAY,
    ZERO_HASH,
    Block,
    ClaimBody,
    EquivocationProof,
    NetworkParams,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
    decode_block,
    make_block,
)
from p2pserve.ledger.rules import LedgerState, apply, apply_proof, check, fingerprint, invariant_violations
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, World
from p2pserve.wire.codec import decode
from p2pserve.wire.duel import DuelOrder, JudgeCandidate
from p2pserve.wire.infer import RequestHeader


def world(seed: int = 1) -> World:
    w = World(random.Random(seed))
    w.open("alice", staked=10 * CREDIT)
    w.open("bob")
    return w


def rejects(reason: str, block: Block, state: LedgerState, **kw: int) -> None:
    before = fingerprint(state)
    with pytest.raises(InvalidBlock) as info:
        check(block, state, **kw)
    assert info.value.reason == reason, info.value
    assert reason in rules.REASONS
    assert fingerprint(state) == before  # check changes nothing


def test_happy_path_balances_and_supply() -> None:
    w = world()
    pay = w.pay("alice", "bob", 7 * CREDIT)
    w.claim("bob", pay, 7 * CREDIT)
    w.stake("bob", 3 * CREDIT)
    a, b = w.state.account(w.id("alice")), w.state.account(w.id("bob"))
    assert a is not None and b is not None
    assert (a.free, a.staked) == (983 * CREDIT, 10 * CREDIT)
    assert (b.free, b.staked) == (1004 * CREDIT, 3 * CREDIT)
    assert w.state.minted == 2 * TEST_PARAMS.initial_credit
    assert invariant_violations(w.state) == []
    assert w.state.stake_of(w.id("bob")) == 3 * CREDIT


def test_forged_claim_without_pay_is_rejected() -> None:
    w = world()
    fake = ClaimBody(w.id("alice"), 1, b"\x07" * 32, 5 * CREDIT)
    rejects("unknown-pay", w.block("bob", fake), w.state)


def test_double_claim_is_rejected() -> None:
    w = world()
    pay = w.pay("alice", "bob", CREDIT)
    w.claim("bob", pay, CREDIT)
    rejects("double-claim", w.block("bob", w.claim_body(pay, CREDIT)), w.state)


def test_replayed_block_is_rejected() -> None:
    w = world()
    pay = w.pay("alice", "bob", CREDIT)
    rejects("duplicate", pay, w.state)


def test_block_signed_by_wrong_key_is_rejected() -> None:
    w = world()
    good = w.block("alice", StakeBody(CREDIT))
    forged = dataclasses.replace(good, signature=w.signer("bob").sign(good.signing_bytes()))
    rejects("bad-signature", forged, w.state)
    w.signer("mallory")
    with pytest.raises(LocalProtocolError):  # signing another account's block is refused locally
        good.signed(w.signer("mallory"))


def test_equivocating_pair_is_rejected_proven_and_frozen() -> None:
    w = world()
    fork_point = w.state.copy()
    first = w.stake("alice", CREDIT)
    second = rules.next_block(w.signer("alice"), fork_point, UnstakeBody(CREDIT), w.now_ms + 5)
    assert (second.height, second.prev) == (first.height, first.prev)
    rejects("equivocation", second, w.state)
    proof = EquivocationProof(first, second)
    proof.verify()
    assert decode(proof.encode(), expect=EquivocationProof) == proof
    w.state = apply_proof(proof, w.state)
    assert w.state.is_frozen(w.id("alice")) and w.state.stake_of(w.id("alice")) == 0
    rejects("frozen", w.block("alice", StakeBody(CREDIT)), w.state)
    with pytest.raises(MalformedMessage):
        EquivocationProof(first, first).verify()
    with pytest.raises(InvalidBlock) as info:
        apply_proof(EquivocationProof(first, first), w.state)
    assert info.value.reason == "bad-proof"


def test_what_a_frozen_account_paid_stays_claimable() -> None:
    w = world()
    pay = w.pay("alice", "bob", CREDIT)
    fork = rules.next_block(w.signer("alice"), LedgerState.genesis(TEST_PARAMS), OpenBody(0), 5)
    w.state = apply_proof(EquivocationProof(w.log[0], fork), w.state)
    w.claim("bob", pay, CREDIT)


def test_structural_rejections() -> None:
    w = world()
    alice = w.signer("alice")
    head = w.state.account(alice.peer_id)
    assert head is not None
    other = dataclasses.replace(TEST_PARAMS, network_id="othernet")
    s2 = LedgerState.genesis(other)
    rejects("wrong-network", w.block("alice", StakeBody(1)), s2)
    mk = lambda **kw: make_block(  # noqa: E731
        alice, **{"network_id": "testnet", "height": head.height + 1, "prev": head.head,
                  "body": StakeBody(1), "timestamp_ms": w.now_ms + 1, **kw}
    )
    rejects("height-gap", mk(height=head.height + 2), w.state)
    rejects("bad-prev", mk(prev=b"\x01" * 32), w.state)
    rejects("bad-timestamp", mk(timestamp_ms=head.timestamp_ms - 1), w.state)
    # dated further ahead of the receiver's clock than the genesis skew: it waits (a time dependency)
    rejects("future", mk(timestamp_ms=w.now_ms + TEST_PARAMS.max_clock_skew_ms + 1), w.state, now_ms=w.now_ms)
    check(mk(timestamp_ms=w.now_ms + TEST_PARAMS.max_clock_skew_ms), w.state, now_ms=w.now_ms)
    check(mk(), w.state, now_ms=w.now_ms)
    rejects("bad-open", mk(body=OpenBody(0)), w.state)
    rejects("bad-open", make_block(w.signer("carol"), network_id="testnet", height=0, prev=ZERO_HASH,
                                   body=StakeBody(1), timestamp_ms=1), w.state)
    rejects("bad-open", w.block("carol", OpenBody(TEST_PARAMS.max_initial_staked + 1)), w.state)
    rejects("malformed", dataclasses.replace(mk(), body=b"\x91\x20").signed(alice), w.state)


def test_amount_rules_and_unbonding_delay() -> None:
    w = world()
    rejects("bad-amount", w.block("alice", StakeBody(0)), w.state)
    rejects("bad-amount", w.block("alice", UnstakeBody(0)), w.state)
    rejects("insufficient-funds", w.block("alice", StakeBody(991 * CREDIT)), w.state)
    rejects("insufficient-stake", w.block("alice", UnstakeBody(11 * CREDIT)), w.state)
    t = w.unstake("alice", 10 * CREDIT).timestamp_ms
    big = PayBody((w.receipt("alice", "bob", 995 * CREDIT),))

    def spend(at: int) -> Block:
        return rules.next_block(w.signer("alice"), w.state, big, at)

    rejects("unbonding", spend(t + 1), w.state)
    rejects("unbonding", spend(t + TEST_PARAMS.unbonding_delay_ms - 10), w.state)
    # released to blocks dated delay + skew after the unstake, so a block dated ahead by the
    # whole accepted skew still cannot spend it before the delay has passed on the receiver
    release = t + TEST_PARAMS.unbonding_delay_ms + TEST_PARAMS.max_clock_skew_ms
    rejects("unbonding", spend(release - 1), w.state)
    w.add(spend(release))
    a = w.state.account(w.id("alice"))
    assert a is not None and (a.free, a.staked, a.unbonding) == (5 * CREDIT, 0, ())
    assert invariant_violations(w.state) == []


def test_pay_rules() -> None:
    w = world()
    w.open("carol")
    # a receipt signed by someone other than its executor
    r = w.receipt("alice", "bob", CREDIT)
    forged = dataclasses.replace(r, signature=w.signer("carol").sign(r.signing_bytes()))
    rejects("bad-receipt", w.block("alice", PayBody((forged,))), w.state)
    rejects("bad-receipt", w.block("alice", PayBody((w.receipt("carol", "bob", CREDIT),))), w.state)
    rejects("bad-receipt", w.block("alice", PayBody((w.receipt("alice", "alice", CREDIT),))), w.state)
    rejects("bad-amount", w.block("alice", PayBody((w.receipt("alice", "bob", 0),))), w.state)
    w.add(w.block("alice", PayBody((r,))))
    rejects("duplicate-pay", w.block("alice", PayBody((r,))), w.state)
    pay = w.log[-1]
    rejects("wrong-payee", w.block("carol", w.claim_body(pay, CREDIT)), w.state)
    rejects("bad-claim", w.block("bob", w.claim_body(pay, CREDIT + 1)), w.state)
    rejects("bad-claim", w.block("bob", ClaimBody(w.id("carol"), pay.height, pay.digest(), CREDIT)), w.state)


def test_batched_pay_settles_every_receipt_once_and_is_claimed_once() -> None:
    w = world()
    prices = [CREDIT, 2 * CREDIT, 5]
    pay = w.pay_many("alice", "bob", prices)
    body = pay.decoded_body()
    assert isinstance(body, PayBody) and body.amount == sum(prices) and body.payee == w.id("bob")
    a = w.state.account(w.id("alice"))
    assert a is not None and a.free == 990 * CREDIT - sum(prices)
    assert all(w.state.is_paid(w.id("bob"), r.request_id) for r in body.receipts)
    (owed,) = w.state.unclaimed_for(w.id("bob"))
    assert owed.amount == sum(prices)
    rejects("bad-claim", w.block("bob", w.claim_body(pay, CREDIT)), w.state)  # one receipt's price is not the sum
    w.claim("bob", pay, sum(prices))
    rejects("double-claim", w.block("bob", w.claim_body(pay, sum(prices))), w.state)
    # any receipt of the batch paid again, alone or inside another batch, is a duplicate-pay
    rejects("duplicate-pay", w.block("alice", PayBody((body.receipts[1],))), w.state)
    again = PayBody((w.receipt("alice", "bob", 1), body.receipts[2]))
    rejects("duplicate-pay", w.block("alice", again), w.state)
    assert invariant_violations(w.state) == [] and w.state.totals()["paid"] == sum(prices)


def test_batched_pay_rejections() -> None:
    w = world()
    w.open("carol")
    r1, r2 = w.receipt("alice", "bob", CREDIT), w.receipt("alice", "bob", CREDIT)
    rejects("mixed-payees", w.block("alice", PayBody((r1, w.receipt("alice", "carol", CREDIT)))), w.state)
    rejects("duplicate-pay", w.block("alice", PayBody((r1, r2, r1))), w.state)
    rejects("bad-amount", w.block("alice", PayBody((r1, w.receipt("alice", "bob", 0)))), w.state)
    rejects("bad-receipt", w.block("alice", PayBody((r1, w.receipt("carol", "bob", CREDIT)))), w.state)
    forged = dataclasses.replace(r2, signature=w.signer("carol").sign(r2.signing_bytes()))
    rejects("bad-receipt", w.block("alice", PayBody((r1, forged))), w.state)
    rejects("insufficient-funds", w.block("alice", w.pay_body("alice", "bob", [500 * CREDIT, 491 * CREDIT])), w.state)
    # the receipt count is a named limit of the body's shape: empty and over-limit pays do not decode
    rejects("malformed", w.block("alice", PayBody(())), w.state)
    over = PayBody(tuple(w.receipt("alice", "bob", 1) for _ in range(MAX_RECEIPTS_PER_PAY + 1)))
    rejects("malformed", w.block("alice", over), w.state)
    full = w.pay_body("alice", "bob", [1] * MAX_RECEIPTS_PER_PAY)
    assert len(full.encode()) <= MAX_BODY  # the limit fits a block body
    w.add(w.block("alice", full))
    assert invariant_violations(w.state) == []


def test_a_verdict_built_from_public_receipts_moves_nothing() -> None:
    """Attack (issue 7, item 3): anyone could slash any stake with a forged verdict: a loser
    receipt copied from a public pay block plus a self-signed "winner" receipt for the same
    request, repeated under fresh order IDs. A verdict now needs the requester's signed
    order over both executors' receipts for one prompt, and a judge that order draws;
    every form of the old attack is refused (tests/test_ledger_verdicts.py covers each
    reason on its own)."""
    w = world()
    w.open("judge", staked=10 * CREDIT)
    copied = w.receipt("alice", "bob", CREDIT)  # bob's receipt for alice, public once paid
    mine = dataclasses.replace(copied, executor=w.id("judge"), signature=b"").signed(w.signer("judge"))
    for requester in ("judge", "bob"):  # the attacker signs the order itself, as requester or party
        header = RequestHeader(copied.request_id, w.params.network_id, w.id(requester), w.id("bob"), "test-model",
                               "chat", bytes(32), 0, sha256(b""), 0)
        order = DuelOrder(w.params.network_id, w.id(requester), (header, header), (mine, copied),
                          (JudgeCandidate(w.id("judge"), CREDIT),), 1, b"")
        with pytest.raises(MalformedMessage):  # receipts not for this requester, nor for these offers
            decode(order.encode(), expect=DuelOrder)
    a = w.state.account(w.id("alice"))
    assert a is not None and a.staked == 10 * CREDIT and w.state.stake_of(w.id("alice")) == 10 * CREDIT


def test_apply_retires_the_old_state_and_copy_keeps_it() -> None:
    w = world()
    old = w.state
    kept = old.copy()
    w.stake("alice", CREDIT)
    with pytest.raises(LedgerError):
        old.account(w.id("alice"))
    k = kept.account(w.id("alice"))
    assert k is not None and k.staked == 10 * CREDIT


def test_fingerprint_does_not_depend_on_interleaving() -> None:
    w = world(3)
    for _ in range(60):
        w.random_step(["alice", "bob"])
    sizes = [len(b.decoded_body().receipts) for b in w.log if isinstance(b.decoded_body(), PayBody)]  # type: ignore[union-attr]
    assert max(sizes) > 1  # histories include batched pays
    by_account = sorted(w.log, key=lambda b: (b.account, b.height))
    # replay with each chain whole before the next: claims may wait for their pays
    state, waiting = LedgerState.genesis(TEST_PARAMS), list(by_account)
    while waiting:
        rest = []
        for b in waiting:
            try:
                state = apply(b, state)
            except InvalidBlock as exc:
                assert exc.reason in rules.DEPENDENCY_REASONS
                rest.append(b)
        assert len(rest) < len(waiting)
        waiting = rest
    assert fingerprint(state) == fingerprint(w.state)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_accounts=st.integers(2, 5), steps=st.integers(1, 80))
def test_random_valid_histories_keep_every_invariant(seed: int, n_accounts: int, steps: int) -> None:
    w = World(random.Random(seed))
    names = [f"n{i}" for i in range(n_accounts)]
    for n in names:
        w.open(n, staked=w.rng.randrange(0, 5 * CREDIT))
    for _ in range(steps):
        w.random_step(names)
        assert invariant_violations(w.state) == []
    t = w.state.totals()
    assert t["free"] + t["staked"] + t["unbonding"] + t["owed"] == t["supply"] == n_accounts * TEST_PARAMS.initial_credit
    assert t["claimed"] <= t["paid"]
    for n in names:
        v = w.state.account(w.id(n))
        assert v is not None and v.free >= 0 and v.staked >= 0
    # replaying the log from genesis gives the same state
    state = LedgerState.genesis(TEST_PARAMS)
    for b in w.log:
        state = apply(b, state)
    assert fingerprint(state) == fingerprint(w.state)


def _valid_blocks() -> tuple[World, list[tuple[Block, LedgerState]]]:
    """(block, state it extends) for one block of each kind."""
    w = world(7)
    w.open("judge")
    out = []
    for make in (
        lambda: w.block("carol", OpenBody(CREDIT)),
        lambda: w.block("alice", StakeBody(CREDIT)),
        lambda: w.block("alice", UnstakeBody(CREDIT)),
        lambda: w.block("alice", w.pay_body("alice", "bob", [CREDIT, 2 * CREDIT, 3])),
        lambda: w.block("bob", w.claim_body(w.log[-1], 3 * CREDIT + 3)),
    ):
        b = make()
        out.append((b, w.state.copy()))
        w.add(b)
    return w, out


_W, _VALID = _valid_blocks()
_FIELDS = [f.name for f in dataclasses.fields(Block)]


def _different(field: str, value: object) -> st.SearchStrategy[object]:
    if isinstance(value, bool):
        base: st.SearchStrategy[object] = st.booleans()
    elif isinstance(value, int):
        base = st.integers(0, 2**63)
    elif isinstance(value, bytes):
        base = st.one_of(st.binary(max_size=80), st.binary(min_size=len(value), max_size=len(value)))
    else:
        base = st.one_of(st.text(max_size=60), st.just(_W.id("bob")), st.just("devnet"))
    return base.filter(lambda v: v != value)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_single_field_mutation_of_a_valid_block_is_rejected(data: st.DataObject) -> None:
    block, state = data.draw(st.sampled_from(_VALID))
    check(block, state)
    field = data.draw(st.sampled_from(_FIELDS))
    value = data.draw(_different(field, getattr(block, field)))
    mutated = dataclasses.replace(block, **{field: value})
    with pytest.raises(InvalidBlock):
        check(mutated, state)


@pytest.mark.parametrize("index", range(len(_VALID)))
def test_every_flipped_byte_of_a_valid_block_is_rejected(index: int) -> None:
    block, state = _VALID[index]
    raw = block.encode()
    rng = random.Random(index)
    for pos in range(len(raw)):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << rng.randrange(8)
        try:
            mutated = decode_block(bytes(flipped))
        except MalformedMessage:
            continue
        with pytest.raises(InvalidBlock):
            rules.plan(rules.prepare(mutated, bytes(flipped)), state)


def test_params_and_reason_table_are_consistent() -> None:
    assert rules.DEPENDENCY_REASONS <= set(rules.REASONS) and rules.TIME_REASONS <= set(rules.REASONS)
    with pytest.raises(MalformedMessage):
        decode(dataclasses.replace(TEST_PARAMS, network_id="a/b").encode(), expect=NetworkParams)


def test_a_genesis_whose_unbonding_is_not_well_above_the_clock_skew_is_refused() -> None:
    """Attack (issue 7, item 4): with a 60 s skew and a 60 s delay, a pay dated 51 s ahead
    spent unstaked credit 9 s after the unstake. A genesis must keep the delay at least
    MIN_UNBONDING_SKEWS skews long, and the release adds the skew (see the unbonding test)."""
    from p2pserve.ledger.blocks import MIN_UNBONDING_SKEWS

    weak = dataclasses.replace(TEST_PARAMS, unbonding_delay_ms=60_000, max_clock_skew_ms=60_000)
    with pytest.raises(MalformedMessage):
        weak.check_genesis()
    with pytest.raises(MalformedMessage):
        decode(weak.encode(), expect=NetworkParams)
    ok = dataclasses.replace(weak, unbonding_delay_ms=MIN_UNBONDING_SKEWS * 60_000)
    ok.check_genesis()
    from p2pserve.errors import StoreError
    from p2pserve.ledger.store import LedgerStore

    with pytest.raises(StoreError, match="unbonding_delay_ms"):
        LedgerStore(":memory:", weak)


def test_future_dating_cannot_spend_unbonding_credit_early() -> None:
    """Attack (issue 7, item 4): unstake at t, then a pay dated as far ahead as receivers
    accept, sent right after. Whatever accepted timestamp the pay carries, a receiver whose
    clock has not yet passed the delay refuses or holds it."""
    w = world()
    w.unstake("alice", 10 * CREDIT)
    t0 = w.now_ms
    big = PayBody((w.receipt("alice", "bob", 995 * CREDIT),))
    skew, delay = TEST_PARAMS.max_clock_skew_ms, TEST_PARAMS.unbonding_delay_ms
    for receiver_now in range(t0, t0 + delay, 1000):
        for ahead in (0, skew // 2, skew):
            b = rules.next_block(w.signer("alice"), w.state, big, receiver_now + ahead)
            with pytest.raises(InvalidBlock) as info:
                check(b, w.state, now_ms=receiver_now)
            assert info.value.reason in ("unbonding", "future")


def test_backdated_unstake_waits_for_the_receivers_own_clock() -> None:
    """Attack (issue 7, item 4, the neighbour): an account idle for longer than the delay
    dates its unstake back to its previous block and spends at once. The receiver releases
    unbonding credit only once its own clock is the delay past when it first saw the
    unstake (``not_before``), so the spend waits (``unbonding-wait``), then applies."""
    w = world()
    w.now_ms += 10 * TEST_PARAMS.unbonding_delay_ms  # idle a long time (in real time)
    real_now = w.now_ms
    head = w.state.account(w.id("alice"))
    assert head is not None
    unstake = rules.next_block(w.signer("alice"), w.state, UnstakeBody(10 * CREDIT), head.timestamp_ms)
    w.state = apply(unstake, w.state, now_ms=real_now)
    release = head.timestamp_ms + TEST_PARAMS.unbonding_delay_ms + TEST_PARAMS.max_clock_skew_ms
    spend = rules.next_block(w.signer("alice"), w.state, PayBody((w.receipt("alice", "bob", 995 * CREDIT),)), release)
    seen = {unstake.digest(): real_now}

    def not_before(h: bytes) -> int | None:
        return seen[h] + TEST_PARAMS.unbonding_delay_ms if h in seen else None

    with pytest.raises(InvalidBlock) as info:
        rules.plan(rules.prepare(spend), w.state, now_ms=real_now + 1000, not_before=not_before)
    assert info.value.reason == "unbonding-wait" and "unbonding-wait" in rules.TIME_REASONS
    later = real_now + TEST_PARAMS.unbonding_delay_ms
    rules.plan(rules.prepare(spend), w.state, now_ms=later, not_before=not_before)
