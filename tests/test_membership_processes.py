"""Three real `p2pserve join` processes on 127.0.0.1 (real libp2p): they find each other from
one bootstrap address, and drop a SIGKILLed peer within peer_ttl + one status interval."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from p2pserve.testing.processes import read_banner, spawn_join, stop_processes

pytestmark = [pytest.mark.libp2p, pytest.mark.processes]

INTERVAL = 1.0
TTL = 3.0


class JoinProcess:
    def __init__(self, proc: subprocess.Popen[str], banner: dict[str, list[str]]) -> None:
        self.proc = proc
        self.peer_id = banner["peer_id"][0]
        self.listening = banner["listening"]
        self.api = banner["api"][0]

    def peers(self) -> set[str]:
        r = httpx.get(f"{self.api}/p2pserve/status", timeout=2)
        return {p["peer_id"] for p in r.json()["peers"]}


def start_node(tmp: Path, name: str, config: Path, bootstrap: str | None = None) -> JoinProcess:
    args = ["--config", str(config), "--data-dir", str(tmp / name), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    proc = spawn_join(args, stderr=subprocess.PIPE)
    try:
        return JoinProcess(proc, read_banner(proc))
    except RuntimeError:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"{name} did not start: {err[-2000:]}") from None


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    # no local model: membership does not need one, and three embedded models would load for nothing
    path.write_text(f"server_params:\n  status_interval: {INTERVAL}\n  peer_ttl: {TTL}\nmodels: []\n")
    return path


@pytest.fixture
def nodes(tmp_path: Path, config: Path) -> Iterator[list[JoinProcess]]:
    started: list[JoinProcess] = []
    try:
        first = start_node(tmp_path, "n0", config)
        started.append(first)
        for i in (1, 2):
            started.append(start_node(tmp_path, f"n{i}", config, bootstrap=first.listening[0]))
        yield started
    finally:
        stop_processes([n.proc for n in started])


def wait_until(pred: object, timeout: float, step: float = 0.1) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if pred():  # type: ignore[operator]
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def test_three_processes_converge_then_drop_a_killed_peer(nodes: list[JoinProcess]) -> None:
    ids = {n.peer_id for n in nodes}
    # banner format
    for n in nodes:
        assert n.peer_id.startswith("12D3KooW")
        assert all(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(f"/p2p/{n.peer_id}") for a in n.listening)
        assert n.api.startswith("http://127.0.0.1:")

    elapsed = wait_until(lambda: all(n.peers() == ids - {n.peer_id} for n in nodes), timeout=10)
    print(f"converged in {elapsed:.2f} s")

    # the same, through the CLI a user would run
    for n in nodes:
        out = subprocess.run([sys.executable, "-m", "p2pserve", "status", "--json", "--api", n.api],
                             capture_output=True, text=True, timeout=30, check=True)
        data = json.loads(out.stdout)
        assert data["peer_id"] == n.peer_id
        assert {p["peer_id"] for p in data["peers"]} == ids - {n.peer_id}
        for p in data["peers"]:
            assert {"peer_id", "models", "load", "stake", "last_seen_s"} <= set(p)

    victim = nodes[2]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.communicate()
    killed_at = time.monotonic()
    survivors = nodes[:2]
    wait_until(lambda: all(victim.peer_id not in n.peers() for n in survivors), timeout=TTL + INTERVAL + 1.0, step=0.05)
    dropped_after = time.monotonic() - killed_at
    print(f"killed peer dropped after {dropped_after:.2f} s (ttl {TTL}, interval {INTERVAL})")
    assert dropped_after <= TTL + INTERVAL + 0.25  # 0.25 s: this test's polling and HTTP round trips


def test_sigterm_exits_cleanly(tmp_path: Path, config: Path) -> None:
    n = start_node(tmp_path, "solo", config)
    n.proc.send_signal(signal.SIGTERM)
    out, err = n.proc.communicate(timeout=15)
    assert n.proc.returncode == 0, err
    assert "Traceback" not in err
    n2 = start_node(tmp_path, "solo2", config)
    n2.proc.send_signal(signal.SIGINT)
    out, err = n2.proc.communicate(timeout=15)
    assert n2.proc.returncode == 0, err
    assert "Traceback" not in err
