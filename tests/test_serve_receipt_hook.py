"""The executor tells ``ServeService.on_receipt_issued`` of every receipt it signs, free
offers included (a model at ``price_per_1k: 0`` gets no ledger admission, which is where
the ``request_accepted`` line used to come from, so free work was never logged); the request
log turns each into a ``request_accepted`` line."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2pserve.eventlog import event_of
from p2pserve.requestlog import RequestLog
from p2pserve.wire.infer import Receipt
from tests.serve_harness import Fail, ScriptedBackend, Sleep, collect, connect_all, start_node, text_of
from transports.memory import MemoryNetwork


async def test_every_signed_receipt_is_told_and_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2pserve.requests")
    told: list[tuple[Receipt, float, float]] = []
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 0)
        backend = ScriptedBackend(script=("one", Sleep(0.5), " two"))
        ex = await start_node(nursery, net, 1, {"m": backend}, prices={"m": 0})
        await connect_all(gw, [ex])
        log = RequestLog(ex.signer.peer_id)

        def hook(receipt: Receipt, accepted_at: float, now: float) -> None:
            told.append((receipt, accepted_at, now))
            log.accepted(receipt, accepted_at, now)

        ex.serve.on_receipt_issued = hook
        assert ex.serve.on_receipt_issued is hook
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "one two"
        backend.script = ("half", Fail("GPU fell off"))
        events, err = await collect(gw.serve)
        assert text_of(events) == "half" and err is not None
        nursery.cancel_scope.cancel()
    (full, at1, now1), (part, at2, now2) = told
    assert (full.price, full.partial, full.completion_tokens, now1 - at1) == (0, False, 2, 0.5)
    assert (part.price, part.partial) == (0, True) and now2 == at2
    lines = [ev[1] for r in caplog.records if (ev := event_of(r)) is not None and ev[0] == "request_accepted"]
    gw_id = gw.signer.peer_id
    assert lines == [
        {"requester": gw_id, "model": "m", "latency_s": 0.5, "tokens_in": 3, "tokens_out": 2, "price": 0.0},
        {"requester": gw_id, "model": "m", "latency_s": 0.0, "tokens_in": 0, "tokens_out": 1, "price": 0.0, "partial": True},
    ]
