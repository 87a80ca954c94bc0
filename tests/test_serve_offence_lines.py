"""Offences by executors are ``offence`` events in the log (docs/operations.md, "Logs"),
rate-limited: one line per executor and kind a minute (with the count it covers) and a line
budget across executors, so a peer that stalls on every request, or a thousand sybils that
each stall once, cannot flood the log."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from p2pserve.eventlog import event_of
from p2pserve.serving.client import OffenceLines
from p2pserve.serving.service import Deadlines
from tests.serve_harness import Hang, ScriptedBackend, collect, connect_all, start_node, text_of
from transports.memory import MemoryNetwork


def offences(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [(r.levelname, ev[1]) for r in caplog.records if (ev := event_of(r)) is not None and ev[0] == "offence"]


def test_one_line_per_peer_and_kind_a_minute_within_a_budget(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve.serving.client")
    lines = OffenceLines(every_s=60.0, burst=3, period=10.0)
    assert lines.record("p1", "stall", "no chunk for 30 s", 0.0, cooldown_s=30.0)
    assert not lines.record("p1", "stall", "again", 1.0, cooldown_s=60.0)  # counted, not written
    assert lines.record("p1", "no-reply", "no answer", 2.0, cooldown_s=120.0)  # another kind
    assert lines.record("p1", "stall", "and again", 61.0, cooldown_s=120.0)  # a minute later: covers 2
    assert [f for _, f in offences(caplog)] == [
        {"peer": "p1", "kind": "stall", "what": "no chunk for 30 s", "count": 1, "cooldown_s": 30.0},
        {"peer": "p1", "kind": "no-reply", "what": "no answer", "count": 1, "cooldown_s": 120.0},
        {"peer": "p1", "kind": "stall", "what": "and again", "count": 2, "cooldown_s": 120.0},
    ]
    assert {level for level, _ in offences(caplog)} == {"WARNING"}
    caplog.clear()
    # sybils: each a first offence, but the budget bounds the lines (3 at once, one per 10 s)
    written = [lines.record(f"sybil{i}", "stall", "x", 70.0 + i * 0.01) for i in range(100)]
    assert sum(written) == 2  # the budget's third token went to p1's line at 61 s
    assert lines.record("late", "stall", "x", 80.0)
    assert offences(caplog)[-1][1]["lines_left_out"] == 98


async def test_a_stalling_executor_is_one_offence_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve")
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {}, deadlines=Deadlines(idle_s=2.0))
        staller = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("par", Hang()))})
        await connect_all(gw, [staller])
        events, err = await collect(gw.serve)
        assert text_of(events) == "par" and err is not None  # broke off; nobody could continue it
        nursery.cancel_scope.cancel()
    ((level, line),) = offences(caplog)
    assert level == "WARNING"
    assert (line["peer"], line["kind"], line["count"], line["cooldown_s"]) == (staller.signer.peer_id, "stall", 1, 30.0)
    assert line["what"]
    assert not [r for r in caplog.records if r.name == "p2pserve.serving.client" and event_of(r) is None]
