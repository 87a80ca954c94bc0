"""Chaos runs with real ``p2pserve join`` processes on 127.0.0.1: nodes that keep their data
dir and ports across restarts, a streaming load that classifies every answer, and the
network-wide invariants checked at the end.

Used by ``bench/chaos.py`` (the full-size run) and ``tests/test_chaos.py`` (the bounded one
in CI). Blocking on the real clock and real pipes like :mod:`p2pserve.testing.processes`.

An answer through the gateway's ``/v1/chat/completions`` (streamed) is classified as:

* ``answered``: HTTP 200, server-sent events ending in ``[DONE]``, exactly one chunk with a
  ``finish_reason``, no error event;
* ``failed``: a clear error, i.e. an HTTP error status with an OpenAI-format body
  (``{"error": {"message", "type", ...}}``), or a 200 stream whose last event before
  ``[DONE]`` is one such error object and that has no ``finish_reason``;
* ``bad``: anything else (a stream cut without ``[DONE]`` or without an ending, a
  connection error, no answer within the client's deadline, an error body of another shape).

A run passes when no answer is ``bad``; the ledger checks are :func:`check_ledgers`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import trio

from p2pserve.ledger import audit as audit_mod
from p2pserve.testing.processes import read_banner, spawn_join

__all__ = ["ChaosNode", "LedgerCheck", "Outcome", "StreamLoad", "check_ledgers", "free_port", "mesh_complete", "poll"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChaosNode:
    """One ``p2pserve join`` process that keeps its data dir, libp2p port and API port across
    restarts (as a node restarted from its config does). Its stderr goes to ``<dir>/<name>.log``."""

    def __init__(self, root: Path, name: str, config: Path, bootstrap: str | None = None) -> None:
        self.name, self.config, self.bootstrap = name, config, bootstrap
        self.data_dir = root / name
        self.log_path = root / f"{name}.log"
        self.port, self.api_port = free_port(), free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.peer_id = ""
        self.addr = ""
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.starts = 0
        self._log: IO[str] | None = None

    def spawn(self) -> None:
        """Start the process (read its banner with :meth:`ready`)."""
        args = ["--config", str(self.config), "--data-dir", str(self.data_dir),
                "--listen", f"/ip4/127.0.0.1/tcp/{self.port}", "--api", f"127.0.0.1:{self.api_port}"]
        if self.bootstrap:
            args += ["--bootstrap", self.bootstrap]
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in _closed
        self._log.write(f"--- start {self.starts}\n")
        self._log.flush()
        self.proc = spawn_join(args, stderr=self._log.fileno())
        self.starts += 1

    def ready(self, timeout: float = 120.0) -> None:
        """Read the banner of the process :meth:`spawn` started. RuntimeError naming the
        node (and its log's tail) if it exits or does not come up within ``timeout``."""
        assert self.proc is not None
        try:
            banner = read_banner(self.proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name} did not start: {exc}; log tail: {self.log_tail()}") from None
        self.peer_id, self.addr = banner["peer_id"][0], banner["listening"][0]
        self.api = banner["api"][0]

    def start(self, timeout: float = 120.0) -> None:
        self.spawn()
        self.ready(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap (no shutdown of any kind: sockets die with the process)."""
        self.signal(signal.SIGKILL)
        self._closed(5.0)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (SIGCONT first, in case it is stopped), wait, SIGKILL past ``timeout``."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        self._closed(timeout)

    def _closed(self, timeout: float) -> None:
        if self.proc is not None:
            try:
                self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 5.0) -> Any:
        r = httpx.get(self.api + path, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def peers(self) -> set[str]:
        return {p["peer_id"] for p in self.get("/p2pserve/status")["peers"]}

    def fingerprint(self) -> str:
        return str(self.get("/p2pserve/ledger/heads")["fingerprint"])


def mesh_complete(nodes: list[ChaosNode]) -> bool:
    """Every node knows every other one (and only them) in its status; ``nodes`` are the live ones."""
    ids = {n.peer_id for n in nodes}
    return all(n.peers() == ids - {n.peer_id} for n in nodes)


async def poll(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.25) -> float:
    """Inside trio: poll ``pred`` (run in a thread, so blocking HTTP is fine; an httpx error
    counts as "not yet") until it holds; the seconds it took. AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if await trio.to_thread.run_sync(pred):
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        await trio.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- load ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request's end: ``kind`` is ``answered``, ``failed`` or ``bad`` (module docstring)."""

    rid: int
    kind: str
    status: int
    detail: str
    executors: list[str]
    started: float
    seconds: float
    deltas: int


@dataclass
class _InFlight:
    executor: str = ""
    deltas: int = 0


def _is_error_object(obj: Any) -> bool:
    err = obj.get("error") if isinstance(obj, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)


def classify_stream(events: list[str]) -> tuple[str, str]:
    """The kind and a detail for the ``data:`` payloads of a 200 stream (module docstring)."""
    if not events or events[-1] != "[DONE]":
        return "bad", f"stream cut without [DONE] after {len(events)} events"
    finishes, errors = 0, 0
    for raw in events[:-1]:
        try:
            obj = json.loads(raw)
        except ValueError:
            return "bad", f"undecodable event {raw[:80]!r}"
        if _is_error_object(obj):
            errors += 1
        elif isinstance(obj, dict) and any(c.get("finish_reason") for c in obj.get("choices") or ()):
            finishes += 1
    if finishes == 1 and errors == 0:
        return "answered", ""
    if errors == 1 and finishes == 0 and _is_error_object(json.loads(events[-2])):
        return "failed", json.loads(events[-2])["error"]["type"]
    return "bad", f"{finishes} finish chunks and {errors} errors"


@dataclass
class StreamLoad:
    """``workers`` clients, each sending streamed chat completions to ``url`` one after the
    other until :meth:`run`'s ``stop`` is set; every request's :class:`Outcome` is kept.
    ``deadline`` is the client's bound on one whole request (past it: ``bad``, a hang)."""

    url: str
    model: str
    workers: int = 4
    max_tokens: int = 24
    deadline: float = 90.0
    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: dict[int, _InFlight] = field(default_factory=dict)
    _next: int = 0

    async def run(self, stop: trio.Event) -> None:
        limits = httpx.Limits(max_connections=self.workers + 2, max_keepalive_connections=self.workers + 2)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.deadline), limits=limits) as client:
            async with trio.open_nursery() as nursery:
                for w in range(self.workers):
                    nursery.start_soon(self._worker, client, stop, w)

    async def _worker(self, client: httpx.AsyncClient, stop: trio.Event, w: int) -> None:
        while not stop.is_set():
            await self.one(client, f"worker {w} request {self._next}")

    def mid_stream_on(self, executor: str) -> int:
        """How many requests are mid-answer on ``executor`` (text received, not ended)."""
        return sum(1 for f in self.in_flight.values() if f.executor == executor and f.deltas > 0)

    async def one(self, client: httpx.AsyncClient, prompt: str) -> Outcome:
        rid = self._next
        self._next += 1
        flight = self.in_flight[rid] = _InFlight()
        t0 = time.monotonic()
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens, "stream": True}
        executors: list[str] = []
        status, kind, detail = 0, "bad", ""
        with trio.move_on_after(self.deadline) as scope:
            try:
                kind, status, detail = await self._stream(client, body, flight, executors)
            except httpx.HTTPError as exc:
                kind, detail = "bad", f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            kind, detail = "bad", f"no complete answer within {self.deadline:.0f} s (a hang)"
        del self.in_flight[rid]
        out = Outcome(rid, kind, status, detail, executors, t0, time.monotonic() - t0, flight.deltas)
        self.outcomes.append(out)
        return out

    async def _stream(self, client: httpx.AsyncClient, body: dict[str, Any], flight: _InFlight,
                      executors: list[str]) -> tuple[str, int, str]:
        async with client.stream("POST", self.url, json=body) as r:
            if r.status_code != 200:
                raw = await r.aread()
                try:
                    ok = _is_error_object(json.loads(raw))
                except ValueError:
                    ok = False
                if ok:
                    return "failed", r.status_code, json.loads(raw)["error"]["type"]
                return "bad", r.status_code, f"error body not OpenAI-shaped: {raw[:200]!r}"
            flight.executor = r.headers.get("x-p2pserve-executor", "")
            executors.append(flight.executor)
            events: list[str] = []
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                events.append(data)
                if '"content"' in data:
                    flight.deltas += 1
                if data == "[DONE]":
                    break
            kind, detail = classify_stream(events)
            return kind, 200, detail


# --- ledger invariants -----------------------------------------------------------------------


@dataclass
class LedgerCheck:
    """One node's ledger, replayed by :func:`p2pserve.ledger.audit.run` from its API."""

    name: str
    ok: bool
    problems: list[str]
    supply: int
    balances: int
    """free + staked + unbonding + owed (unclaimed pays), micro-credits: equals supply when conserved."""
    accounts: int
    fingerprint: str


def check_ledgers(nodes: list[ChaosNode]) -> list[LedgerCheck]:
    """Audit every node's ledger through its API (the code ``p2pserve audit --api`` runs)."""
    out = []
    for n in nodes:
        report = audit_mod.run(api=n.api)
        t = report.state.totals()
        out.append(LedgerCheck(
            n.name, report.ok, [p.line() for p in report.problems], t["supply"],
            t["free"] + t["staked"] + t["unbonding"] + t["owed"], len(report.state.accounts()), n.fingerprint(),
        ))
    return out
