"""What one routed request costs in counted work, not in time: trio task steps, trips through
trio's I/O loop, yamux frames and signed-peer-record work, per request (and, for reference,
the process's CPU time per request, which is timed and so is not exact).

Three nodes in one process on real libp2p (127.0.0.1; ``tests/libp2p_harness.py``: node 0 a
gateway that always offloads, nodes 1 and 2 serving a fake backend), streamed 16-token chat
completions through node 0's ``/v1``, one after the other. Counts do not depend on how busy
the machine is, so two trees compare exactly where timing on a shared machine cannot: run
this file from each tree (``cd /tmp/base && PYTHONPATH=/tmp/base <repo>/.venv/bin/python
<repo>/bench/serve_steps.py``; the harness and the transport are imported from the current
directory).

Run: ``.venv/bin/python bench/serve_steps.py [--requests 40]``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections import Counter
from typing import Any

import httpx
import libp2p.host.basic_host as basic_host
import libp2p.pubsub.utils as pubsub_utils
import libp2p.stream_muxer.yamux.yamux as yamux
import trio
from trio.abc import Instrument

sys.path.insert(0, os.getcwd())
from tests.libp2p_harness import MODEL, three_nodes, wait_ready  # noqa: E402

COUNTED = ((yamux.Yamux, "_write_frame"), (yamux.YamuxStream, "send_window_update"), (basic_host.BasicHost, "get_addrs"),
           (pubsub_utils, "consume_envelope"))
LABELS = ("yamux frames written", "  of which window updates", "own peer records built", "peer records verified")


class Counts(Instrument):
    """Task steps by task name and I/O-loop trips, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.steps: Counter[str] = Counter()
        self.io_waits = 0
        self.calls: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.steps[task.name.split(".<locals>")[0].removeprefix("functools.partial(")] += 1

    def before_io_wait(self, timeout: float) -> None:
        if self.on:
            self.io_waits += 1

    def count(self, owner: Any, name: str, label: str) -> None:
        """Count calls of ``owner.name`` (sync or async) under ``label``."""
        original = getattr(owner, name)
        counts = self

        if inspect.iscoroutinefunction(original):

            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                if counts.on:
                    counts.calls[label] += 1
                return await original(*args, **kwargs)

            setattr(owner, name, counted_async)
        else:

            def counted(*args: Any, **kwargs: Any) -> Any:
                if counts.on:
                    counts.calls[label] += 1
                return original(*args, **kwargs)

            setattr(owner, name, counted)


async def run(requests: int) -> None:
    counts = Counts()
    for (owner, name), label in zip(COUNTED, LABELS, strict=True):
        counts.count(owner, name, label)
    trio.lowlevel.add_instrument(counts)
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    async with three_nodes() as (nodes, urls), httpx.AsyncClient(timeout=30) as client:
        await wait_ready(nodes)
        for _ in range(10):  # warm: session streams open, ledger accounts in use
            (await client.post(urls[0] + "/v1/chat/completions", json=body)).raise_for_status()
        await trio.sleep(1)
        counts.on = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(requests):
            (await client.post(urls[0] + "/v1/chat/completions", json=body)).raise_for_status()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        counts.on = False
    ours = {k: v for k, v in counts.steps.items() if not k.startswith("__main__")}
    print(f"per routed request, over {requests} (3 nodes in one process, real libp2p on 127.0.0.1):")
    print(f"  trio task steps            {sum(ours.values()) / requests:7.1f}  (the benchmark's own client not counted)")
    print(f"  I/O-loop trips             {counts.io_waits / requests:7.1f}")
    for label in LABELS:
        print(f"  {label:27}{counts.calls[label] / requests:7.1f}")
    print(f"  CPU ms (the whole process)  {cpu * 1000 / requests:6.2f}  (timed: varies with the machine; the counts do not)")
    print(f"  wall ms                     {wall * 1000 / requests:6.2f}")
    print("task steps by task:")
    for name, n in sorted(ours.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {n / requests:6.1f}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=40)
    trio.run(run, ap.parse_args().requests)


if __name__ == "__main__":
    main()
