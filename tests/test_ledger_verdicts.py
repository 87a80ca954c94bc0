"""Verdict blocks: a drawn judge's verdict moves stake weight from the loser to the winner;
every way to forge, replay or self-judge one is refused with its reason; two orders for one
duel void each other, on every node, whatever the arrival order."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from p2pserve.errors import InvalidBlock, MalformedMessage
from p2pserve.ledger import rules
from p2pserve.ledger.blocks import Block, VerdictBody
from p2pserve.ledger.rules import LedgerState, check, fingerprint, invariant_violations
from p2pserve.testing.duel import drawn_judge, duel_order, verdict_body
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, World
from p2pserve.wire.codec import decode
from p2pserve.wire.duel import DuelOrder, JudgeCandidate

JUDGES = ("j1", "j2", "j3")
PENALTY = TEST_PARAMS.duel_penalty


def world(seed: int = 1) -> World:
    w = World(random.Random(seed))
    for name in ("req", "good", "bad", *JUDGES):
        w.open(name, staked=10 * CREDIT)
    return w


def candidates() -> list[tuple[str, int]]:
    return [(j, 10 * CREDIT) for j in JUDGES]


def rejects(reason: str, block: Block, state: LedgerState) -> None:
    before = fingerprint(state)
    with pytest.raises(InvalidBlock) as info:
        check(block, state)
    assert info.value.reason == reason, info.value
    assert fingerprint(state) == before


def test_a_drawn_judges_verdict_moves_stake_weight_not_credit() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    judge = drawn_judge(w, order, JUDGES)
    free = {n: w.state.account(w.id(n)).free for n in ("good", "bad")}  # type: ignore[union-attr]
    w.add(w.block(judge, verdict_body(w, order, "A")))
    assert w.state.stake_of(w.id("good")) == 10 * CREDIT + PENALTY
    assert w.state.stake_of(w.id("bad")) == 10 * CREDIT - PENALTY
    assert {n: w.state.account(w.id(n)).free for n in ("good", "bad")} == free  # type: ignore[union-attr]
    [v] = w.state.verdicts()
    assert (v.a, v.b, v.outcome, v.judge) == (w.id("good"), w.id("bad"), "A", w.id(judge))
    assert invariant_violations(w.state) == []


def test_a_tie_moves_nothing_but_is_counted() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    w.add(w.block(drawn_judge(w, order, JUDGES), verdict_body(w, order, "tie")))
    assert w.state.stake_of(w.id("good")) == w.state.stake_of(w.id("bad")) == 10 * CREDIT
    assert [v.outcome for v in w.state.verdicts()] == ["tie"]
    with pytest.raises(MalformedMessage):
        decode(VerdictBody(order, "tie", "fake", (), (), PENALTY).encode(), expect=VerdictBody)


def test_stake_weight_never_goes_below_zero() -> None:
    w = world()
    w.open("poor")
    for _ in range(3):
        order = duel_order(w, "req", "good", "poor", candidates())
        w.add(w.block(drawn_judge(w, order, JUDGES), verdict_body(w, order, "A")))
    assert w.state.stake_of(w.id("poor")) == 0 and w.state.stake_delta(w.id("poor")) == -3 * PENALTY
    assert w.state.stake_of(w.id("good")) == 10 * CREDIT + 3 * PENALTY


def test_the_requester_cannot_judge_its_own_duel() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    rejects("judge-is-party", w.block("req", verdict_body(w, order, "A")), w.state)


def test_an_executor_cannot_judge_a_duel_it_is_in() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    rejects("judge-is-party", w.block("good", verdict_body(w, order, "A")), w.state)
    rejects("judge-is-party", w.block("bad", verdict_body(w, order, "B")), w.state)


def test_a_judge_outside_the_draw_is_refused() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    drawn = drawn_judge(w, order, JUDGES)
    for other in (j for j in JUDGES if j != drawn):
        rejects("not-drawn", w.block(other, verdict_body(w, order, "A")), w.state)
    w.open("outsider", staked=50 * CREDIT)
    rejects("not-drawn", w.block("outsider", verdict_body(w, order, "A")), w.state)


def test_a_replayed_verdict_is_refused() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    judge = drawn_judge(w, order, JUDGES)
    first = w.add(w.block(judge, verdict_body(w, order, "A")))
    rejects("duplicate", first, w.state)  # the same block again
    rejects("duplicate-verdict", w.block(judge, verdict_body(w, order, "A")), w.state)  # the same verdict, new block
    rejects("duplicate-verdict", w.block(judge, verdict_body(w, order, "B")), w.state)  # changing its mind


def test_a_forged_receipt_is_refused() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    judge = drawn_judge(w, order, JUDGES)
    # the requester re-signs an order whose second receipt it signed itself, not the executor
    forged = dataclasses.replace(order.receipts[1], signature=w.signer("req").sign(order.receipts[1].signing_bytes()))
    bad = dataclasses.replace(order, receipts=(order.receipts[0], forged), signature=b"").signed(w.signer("req"))
    judge = drawn_judge(w, bad, JUDGES)
    rejects("bad-receipt", w.block(judge, verdict_body(w, bad, "A")), w.state)


def test_an_order_the_requester_never_signed_is_refused() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    # someone else's signature, and the requester's signature over other candidates
    by_other = dataclasses.replace(order, signature=w.signer("good").sign(order.signing_bytes()))
    moved = dataclasses.replace(order, candidates=order.candidates[:1])
    for o in (by_other, moved):
        rejects("bad-order", w.block(drawn_judge(w, o, JUDGES), verdict_body(w, o, "A")), w.state)


def test_the_penalty_is_the_networks_split_among_the_judges() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates(), judges=2)
    judge = drawn_judge(w, order, JUDGES)
    rejects("bad-verdict", w.block(judge, dataclasses.replace(verdict_body(w, order, "A"), penalty=PENALTY)), w.state)
    w.add(w.block(judge, verdict_body(w, order, "A")))
    assert w.state.stake_delta(w.id("good")) == PENALTY // 2


def test_malformed_orders_do_not_decode() -> None:
    w = world()
    order = duel_order(w, "req", "good", "bad", candidates())
    ra, rb = order.receipts
    ha, hb = order.headers
    party = JudgeCandidate(w.id("good"), CREDIT)
    for broken in (
        dict(candidates=(*order.candidates, party)),  # an executor as candidate
        dict(candidates=tuple(reversed(order.candidates))),  # unsorted
        dict(receipts=(ra, ra)),  # one executor twice
        dict(receipts=(rb, ra)),  # receipts swapped against their headers
        dict(headers=(ha, dataclasses.replace(hb, body_hash=bytes(32)))),  # two different prompts
        dict(receipts=(ra, dataclasses.replace(rb, partial=True))),  # an incomplete answer
        dict(judges=0),
    ):
        with pytest.raises(MalformedMessage):
            decode(dataclasses.replace(order, **broken).encode(), expect=DuelOrder)  # type: ignore[arg-type]


def test_two_orders_for_one_duel_void_each_other_in_any_arrival_order() -> None:
    """A requester that re-signs a duel to redraw its judge gets nothing counted: both
    orders cite the same receipts, so every verdict on either moves nothing."""
    w = world(3)
    order = duel_order(w, "req", "good", "bad", candidates())
    regrind = dataclasses.replace(order, candidates=order.candidates[:2], signature=b"").signed(w.signer("req"))
    honest_other = duel_order(w, "req", "good", "bad", candidates())
    start = w.state.copy()
    blocks = [w.add(w.block(drawn_judge(w, o, JUDGES), verdict_body(w, o, "B"))) for o in (order, regrind, honest_other)]
    prints = set()
    for perm in itertools.permutations(blocks):
        state = start.copy()
        pending = list(perm)
        while pending:  # arrival order, except that a chain's blocks apply in height order
            b = next(b for b in pending if not any(o.account == b.account and o.height < b.height for o in pending))
            pending.remove(b)
            state = rules.apply(b, state)
        prints.add(fingerprint(state))
        assert state.void_orders() == sorted([order.order_id(), regrind.order_id()])
        assert state.stake_delta(w.id("bad")) == PENALTY  # only the honest order counts
        assert invariant_violations(state) == []
    assert len(prints) == 1


def test_audit_rejects_each_collusion_with_its_reason_and_prints_ratings() -> None:
    """The same checks in ``audit``: a stream holding one honest verdict and one verdict of
    each abuse reports each abuse with its reason (and the honest one in the ratings)."""
    from p2pserve.ledger import audit
    from p2pserve.ledger.blocks import make_block

    w = world(5)
    order = duel_order(w, "req", "good", "bad", candidates())
    w.add(w.block(drawn_judge(w, order, JUDGES), verdict_body(w, order, "A")))
    other = duel_order(w, "req", "good", "bad", candidates())
    outsider = next(j for j in JUDGES if j != drawn_judge(w, other, JUDGES))
    bad = [  # written as valid-looking next blocks of their authors, never applied
        ("judge-is-party", "req", verdict_body(w, other, "A")),
        ("judge-is-party", "bad", verdict_body(w, other, "B")),
        ("not-drawn", outsider, verdict_body(w, other, "B")),
    ]
    records = [audit.Record(b.encode()) for b in w.log]
    for _, who, body in bad:
        head = w.state.account(w.id(who))
        assert head is not None
        block = make_block(w.signer(who), network_id=w.params.network_id, height=head.height + 1, prev=head.head,
                           body=body, timestamp_ms=w.now_ms + 1)
        records.append(audit.Record(block.encode()))
    report = audit.audit(audit.AuditSource(w.params, records))
    assert sorted(p.reason for p in report.problems) == sorted(r for r, _, _ in bad)
    data = report.to_json()
    assert data["verdicts"] == 1 and data["ratings"][w.id("good")]["wins"] == 1
