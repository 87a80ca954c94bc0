"""Real ``p2pserve join`` child processes: start one, read its start-up banner, stop them all.

Used by ``p2pserve demo``, the benchmarks in ``bench/`` and the tests marked ``processes``.
These helpers block on the real clock and real pipes (they are for whole processes, not for
code under trio's virtual clock).

A join process prints ``key: value`` lines on stdout once it is up, ``api: <url>`` last::

    proc = spawn_join(["--data-dir", str(tmp / "a"), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
    try:
        banner = read_banner(proc)       # {"peer_id": [...], "listening": [...], "api": [...]}
    finally:
        stop_processes([proc])
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

__all__ = ["read_banner", "spawn_join", "stop_processes", "wait_for"]


def spawn_join(args: list[str], *, stderr: int | None = None) -> subprocess.Popen[str]:
    """Start ``python -m p2pserve join ARGS`` with its stdout piped (read it with read_banner)."""
    return subprocess.Popen(
        [sys.executable, "-m", "p2pserve", "join", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop_processes(procs: list[subprocess.Popen[str]], timeout: float = 15.0) -> None:
    """SIGTERM every live process, then wait (killing what does not stop in ``timeout`` s)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def read_banner(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, list[str]]:
    """Read a join process's ``key: value`` banner up to its ``api:`` line (the last one).

    Each key maps to its values in order (``listening`` has one line per address). Raises
    RuntimeError if the process exits first or the banner is not complete within ``timeout``
    seconds (checked between lines: a process that prints nothing blocks the read).
    """
    deadline = time.monotonic() + timeout
    out: dict[str, list[str]] = {}
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node exited with code {proc.wait()} before it was ready")
        key, _, value = line.strip().partition(": ")
        out.setdefault(key, []).append(value)
        if key == "api":
            return out
    raise RuntimeError("node did not start in time")


def wait_for(pred: Callable[[], bool], timeout: float, what: str, *, poll: float = 0.25,
             ignore: tuple[type[BaseException], ...] = ()) -> None:
    """Poll ``pred`` (real time: for tests that drive real processes) until it holds; an
    exception in ``ignore`` (e.g. the node not listening yet) counts as "not yet".
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except ignore:
            pass
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
