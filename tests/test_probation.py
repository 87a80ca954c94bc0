"""Executors unreachable after advertising (issue 11, bounded membership): an offer to a
peer no stream opens to fails within the connect deadline and puts the peer on probation
(offered work only after every reachable peer) for a period that grows with each miss in a
row and ends at the first stream that opens; one rate-limited log line per peer. The milder
rule (probation, not exclusion) keeps a lone executor usable the moment it is back: see
test_serve_memory.py::test_partitioned_executor_never_answers_then_503."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2pserve.eventlog import event_of
from p2pserve.serving.offenders import Offence, OffenderBook
from p2pserve.serving.service import Deadlines
from tests.serve_harness import ScriptedBackend, collect, connect_all, start_node, text_of
from transports.memory import MemoryNetwork

# --- the book (pure) --------------------------------------------------------------------------


def test_unreachable_peer_is_on_probation_for_a_growing_period_then_clean() -> None:
    book = OffenderBook(unreachable_base_s=2.0, unreachable_max_s=5.0)
    assert book.unreachable("a", 0.0) == 2.0
    assert book.split(["a", "b"], 1.0) == (["b"], ["a"])  # ordered last, never excluded
    assert not book.cooling("a", 1.0) and book.strikes("a") == 0.0
    assert book.split(["a", "b"], 2.0) == (["a", "b"], [])  # the probation ended
    assert book.unreachable("a", 2.0) == 4.0  # a second miss in a row: twice as long
    assert book.unreachable("a", 6.0) == 5.0  # capped
    assert book.misses("a") == 3
    book.reached("a")  # a stream opened: forgiven at once
    assert book.misses("a") == 0 and book.split(["a"], 6.5) == (["a"], [])
    assert book.unreachable("a", 7.0) == 2.0  # the backoff starts over


def test_an_answer_forgives_misses_and_strikes_still_cool_off() -> None:
    book = OffenderBook(base_cooldown_s=30.0, unreachable_base_s=2.0)
    book.unreachable("a", 0.0)
    book.served("a")
    assert book.misses("a") == 0
    book.unreachable("b", 0.0)
    book.offence("b", Offence.NO_REPLY, 0.0)  # a harsher offence: cooling off wins
    assert book.split(["b"], 1.0) == ([], []) and book.split(["b"], 31.0) == ([], ["b"])
    rows = {r["peer_id"]: r for r in book.snapshot(1.0)}
    assert rows["b"]["unreachable"] == 1 and rows["b"]["last"] == "no-reply"


def test_snapshot_and_memory_bound() -> None:
    book = OffenderBook(max_entries=2)
    book.unreachable("a", 0.0)
    book.unreachable("b", 1.0)
    book.unreachable("c", 2.0)  # room made: "a", whose probation ends first, forgiven
    assert [book.misses(p) for p in "abc"] == [0, 1, 1]
    assert [r["peer_id"] for r in book.snapshot(2.0)] == ["b", "c"]
    assert book.snapshot(2.0)[0]["last"] == "unreachable"


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="invalid offender book"):
        OffenderBook(unreachable_base_s=0.0)
    with pytest.raises(ValueError, match="invalid offender book"):
        OffenderBook(unreachable_base_s=10.0, unreachable_max_s=5.0)


# --- on the memory transport -------------------------------------------------------------------


async def test_unreachable_executor_is_tried_last_until_it_answers(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The ghost has all the stake (so it would be first every time) and cannot be reached:
    the first request pays one connect deadline, the next ones go straight to the good
    executor while the ghost's probation lasts; once reachable again it is first again."""
    caplog.set_level(logging.WARNING, logger="p2pserve.serving.client")
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(seed=5, dial_timeout=30.0)
        gw = await start_node(nursery, net, 1, {}, deadlines=Deadlines(connect_s=1.0))
        ghost = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("ghost",))})
        good = await start_node(nursery, net, 3, {"m": ScriptedBackend(script=("good",))})
        await connect_all(gw, [ghost], stake=10**15)
        await connect_all(gw, [good], stake=1)
        net.partition([gw.signer.peer_id], [ghost.signer.peer_id])
        book = gw.serve.offenders
        t0 = trio.current_time()
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "good"
        assert 1.0 <= trio.current_time() - t0 < 1.5  # one connect deadline, then the good one
        assert book.misses(ghost.signer.peer_id) == 1
        t1 = trio.current_time()
        for _ in range(5):  # within the 2 s probation: the ghost is not tried first
            events, err = await collect(gw.serve)
            assert err is None and text_of(events) == "good"
        assert trio.current_time() - t1 < 0.5 and book.misses(ghost.signer.peer_id) == 1
        await trio.sleep(2.0)  # the probation ends: first again, unreachable again, twice as long
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "good" and book.misses(ghost.signer.peer_id) == 2
        lines = [ev[1] for r in caplog.records if (ev := event_of(r)) and ev[0] == "offence"]
        assert len(lines) == 1, lines  # rate-limited: one line per peer and kind a minute
        assert (lines[0]["peer"], lines[0]["kind"], lines[0]["count"], lines[0]["probation_s"]) == (
            ghost.signer.peer_id, "unreachable", 1, 2.0)
        assert "unreachable after advertising" in lines[0]["what"]
        net.heal()
        await trio.sleep(4.0)
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "ghost" and book.misses(ghost.signer.peer_id) == 0
        nursery.cancel_scope.cancel()
