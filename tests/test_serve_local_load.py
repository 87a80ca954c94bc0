"""The local model's load after a local request ends (issue 12, measured against a real
llama_cpp.server: back-to-back requests took 0.5-0.7 s more through the node than direct):
a load read while a request ran counted it until the next read a second later, so the next
request waited a retry interval behind a "busy" reading. Now the load a policy sees stops
counting a request the moment it ends (p2pserve/serving/local.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio
import trio.testing

from p2pserve.backends.base import Load
from p2pserve.policies import PolicyParams
from p2pserve.serving.events import Started
from p2pserve.serving.local import LocalModels
from p2pserve.testing.scripted import ScriptedBackend, Sleep
from tests.serve_harness import collect, connect_all, start_node, text_of
from transports.memory import MemoryNetwork

# no peers, so never offloaded; and never queued behind a busy reading: a request the load
# calls busy waits retry_interval_s (0.5 s) before deciding again
PARAMS = PolicyParams(accept_frequency=1.0, queue_frequency=0.0)


class ScrapedBackend(ScriptedBackend):
    """Reads like a backend's Prometheus ``/metrics``: requests running and a KV-cache usage
    that is high while one runs."""

    async def load(self) -> Load:
        return Load(running=self.running, queued=0, token_usage=0.9 if self.running else 0.0, source="metrics")


async def back_to_back(backend: ScriptedBackend) -> list[float]:
    """Two requests one after the other on one node; how long each took."""
    took: list[float] = []
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, MemoryNetwork(), 0, {"m": backend}, params=PARAMS)
        for _ in range(2):
            t0 = trio.current_time()
            events, err = await collect(node.serve)
            assert err is None and text_of(events) == "ab"
            assert isinstance(events[0], Started) and events[0].local
            took.append(trio.current_time() - t0)
        nursery.cancel_scope.cancel()
    return took


async def test_back_to_back_local_requests_do_not_wait(autojump_clock: trio.testing.MockClock) -> None:
    # the answer spans a load refresh (every 1 s), which reads the model busy with it
    for backend in (ScriptedBackend(script=("a", Sleep(1.5), "b"), max_concurrency=1),
                    ScrapedBackend(script=("a", Sleep(1.5), "b"), max_concurrency=1)):
        durations = await back_to_back(backend)
        assert durations == [1.5, 1.5], (type(backend).__name__, durations)  # was [1.5, 2.5]


@dataclass
class SlowLoad(ScriptedBackend):
    """A backend whose load reads take ``read_s`` and report ``others`` requests of other
    clients besides its own."""

    read_s: float = 0.0
    others: int = 0

    async def load(self) -> Load:
        running = self.running + self.others
        await trio.sleep(self.read_s)
        return Load(running=running, queued=0, token_usage=0.5, source="metrics")


@contextmanager
def one_request(local: LocalModels) -> Iterator[None]:
    """One request running on local model ``m`` (the backend counts it too)."""
    backend = local.backends["m"]
    assert isinstance(backend, SlowLoad)
    with local.running("m"):
        backend.running += 1
        try:
            yield
        finally:
            backend.running -= 1


async def test_a_read_stops_counting_a_request_that_ended(autojump_clock: trio.testing.MockClock) -> None:
    backend = SlowLoad(read_s=1.0, others=2)  # other clients of the backend: they stay counted
    local = LocalModels({"m": backend})
    with one_request(local):
        await local.read_load("m")
        assert local.view("m").load == Load(running=3, token_usage=0.5, source="metrics")
    assert local.view("m").load == Load(running=2, token_usage=None, source="metrics")
    assert local.view("m").inflight == 0

    async with trio.open_nursery() as nursery:
        # a read begun while a request ran, returning after it ended, is corrected too
        with one_request(local):
            nursery.start_soon(local.read_load, "m")
            await trio.sleep(0.5)
        await trio.sleep(1.0)
        assert local.loads["m"].running == 3 and local.view("m").load.running == 2

        # a request begun after a read is not taken off it; a later read replaces the correction
        await local.read_load("m")
        with one_request(local):
            pass
        assert local.view("m").load == Load(running=2, token_usage=0.5, source="metrics")

        # an older read returning after a newer one does not overwrite it
        backend.read_s = 2.0
        nursery.start_soon(local.read_load, "m")
        await trio.sleep(0.1)
        backend.read_s, backend.others = 0.0, 5
        await local.read_load("m")
        await trio.sleep(3.0)
        assert local.view("m").load.running == 5


class RemoteLoadBackend(ScrapedBackend):
    """Its load comes over the network (an HTTP server's ``/metrics``): each read takes 0.3 s."""

    load_over_network = True

    async def load(self) -> Load:
        await trio.sleep(0.3)
        return await super().load()


async def offer_after_pause(backend: ScriptedBackend) -> tuple[float, int]:
    """A gateway's request to an executor serving ``backend``, after 5.7 s idle: (seconds it
    took, load reads the executor began meanwhile)."""
    async with trio.open_nursery() as nursery:
        net = MemoryNetwork()
        gw = await start_node(nursery, net, 1, {})
        ex = await start_node(nursery, net, 2, {"m": backend})
        await connect_all(gw, [ex])
        await trio.sleep(5.7)  # a pause: the loop's last reading ended 0.5 s ago, its next is 0.5 s away
        reads, t0 = ex.serve.local._reads["m"], trio.current_time()
        events, err = await collect(gw.serve)
        assert err is None and text_of(events) == "ab" and ex.serve.counters.served_for_peers == 1
        took = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    return took, ex.serve.local._reads["m"] - reads


async def test_an_offer_does_not_wait_for_a_scrape(autojump_clock: trio.testing.MockClock) -> None:
    """An executor whose backend's load comes over the network decides on an offer from the
    load its node read last (the load loop reads it every second) instead of scraping first:
    the first request after a pause waited one scrape more than the others."""
    backend = RemoteLoadBackend(script=("a", "b"), max_concurrency=1)
    took, reads = await offer_after_pause(backend)
    assert took < 0.1 and reads == 0  # memory transport, latency 0: no scrape in between


async def test_an_in_process_load_is_read_at_each_offer(autojump_clock: trio.testing.MockClock) -> None:
    took, reads = await offer_after_pause(ScrapedBackend(script=("a", "b"), max_concurrency=1))
    assert took < 0.1 and reads == 1
