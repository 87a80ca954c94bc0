"""The serving tracer (p2pserve/serving/tracer.py) hears of every attempt's first text, also
when a remote executor's first delivery carries several chunks joined (it used to fire only
when the first delivery was one chunk, so TTFT went missing from the request log); and a
tracer that is falsy (an empty container, say) is still the one the service calls."""

from __future__ import annotations

import trio
import trio.testing

from p2pserve.serving.events import Outcome
from p2pserve.testing.scripted import ScriptedBackend
from tests.serve_harness import collect, connect_all, start_node, text_of
from transports.memory import MemoryNetwork


class Recorder:
    """Records every hook call; falsy like an empty container."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def __len__(self) -> int:
        return 0

    def request_started(self, key: str, model: str, now: float) -> None:
        self.calls.append(("request_started", key))

    def attempt_started(self, key: str, executor: str, local: bool, now: float) -> None:
        self.calls.append(("attempt_started", key, executor))

    def first_text(self, key: str, executor: str, now: float) -> None:
        self.calls.append(("first_text", key, executor))

    def attempt_ended(self, key: str, executor: str, outcome: Outcome, now: float) -> None:
        self.calls.append(("attempt_ended", key, executor, outcome.value))

    def request_ended(self, key: str, ok: bool, executor: str | None, now: float) -> None:
        self.calls.append(("request_ended", key, str(ok)))


async def test_first_text_of_a_joined_delivery_and_a_falsy_tracer(autojump_clock: trio.testing.MockClock) -> None:
    tracer = Recorder()
    assert not tracer
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork(default_latency=0.01)  # the executor's writes land together
        gw = await start_node(nursery, net, 0, tracer=tracer)
        ex = await start_node(nursery, net, 1, {"m": ScriptedBackend(script=("a", "b", "c"))})
        await connect_all(gw, [ex])
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "abc"
        # the executor's chunks arrived together: the first delivery joins several
        assert len(next(e.text for e in events if hasattr(e, "text"))) > 1
        me = await start_node(nursery, net, 2, {"m": ScriptedBackend(script=("x", "y"))}, tracer=tracer)
        events, err = await collect(me.serve)
        assert err is None and text_of(events) == "xy"
        nursery.cancel_scope.cancel()
    key_gw = tracer.calls[0][1]
    key_me = tracer.calls[-1][1]
    ex_id, me_id = ex.signer.peer_id, me.signer.peer_id
    assert tracer.calls == [
        ("request_started", key_gw), ("attempt_started", key_gw, ex_id), ("first_text", key_gw, ex_id),
        ("attempt_ended", key_gw, ex_id, "completed"), ("request_ended", key_gw, "True"),
        ("request_started", key_me), ("attempt_started", key_me, me_id), ("first_text", key_me, me_id),
        ("attempt_ended", key_me, me_id, "completed"), ("request_ended", key_me, "True"),
    ]
