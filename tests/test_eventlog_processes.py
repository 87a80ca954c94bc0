"""The event log of a real `p2pserve join` process (fake backend, loopback): stdout keeps only
the banner scripts parse; `--log-format json` makes every stderr line one JSON object;
`join -q` writes no info lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from p2pserve.testing.processes import read_banner, spawn_join, stop_processes, wait_for

pytestmark = [pytest.mark.libp2p, pytest.mark.processes]

CONFIG = "models:\n  - model_path: echo-1\n    backend: fake\nserver_params:\n  status_interval: 0.5\n"


def node_args(tmp_path: Path) -> list[str]:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(CONFIG)
    return ["--config", str(cfg), "--data-dir", str(tmp_path / "d"), "--listen", "/ip4/127.0.0.1/tcp/0",
            "--api", "127.0.0.1:0"]


def run_until_opened(proc: subprocess.Popen[str]) -> tuple[dict[str, list[str]], str, str]:
    """The banner, then (once the node's ledger account is open and it was stopped) the
    rest of its stdout and its whole stderr."""
    try:
        banner = read_banner(proc)
        api = banner["api"][0]
        wait_for(lambda: bool(httpx.get(f"{api}/p2pserve/ledger", timeout=5).json()["opened"]), 30,
                 "the ledger account to open", ignore=(httpx.HTTPError,))
    finally:
        stop_processes([proc])
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return banner, out, err


def test_log_format_json_writes_one_object_per_line(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "p2pserve", "--log-format", "json", "join", *node_args(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    banner, out, err = run_until_opened(proc)
    assert out == ""  # the banner, and nothing else, on stdout
    lines = [json.loads(line) for line in err.splitlines()]
    assert all(set(obj) == {"ts", "level", "event", "fields"} for obj in lines), err
    events = {obj["event"]: obj for obj in lines}
    joined = events["joined"]
    assert joined["level"] == "info"
    assert joined["fields"]["peer"] == banner["peer_id"][0]
    assert joined["fields"]["addrs"] == banner["listening"]
    assert joined["fields"]["models"] == ["echo-1"]
    assert events["account_opened"]["fields"]["free"] == 1000.0
    assert events["shutting_down"]["fields"] == {"signal": "SIGTERM"}


def test_join_quiet_writes_no_info_lines(tmp_path: Path) -> None:
    banner, out, err = run_until_opened(spawn_join(["-q", *node_args(tmp_path)], stderr=subprocess.PIPE))
    assert set(banner) == {"peer_id", "key", "listening", "api"} and out == ""
    assert [line for line in err.splitlines() if " INFO " in line or " DEBUG " in line] == []
