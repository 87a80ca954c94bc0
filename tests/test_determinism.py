"""Same seed, same result: a concurrent serving scenario (6 nodes, 40 concurrent requests,
rejections, fail-overs and failures included) run twice in separate processes, with
different PYTHONHASHSEEDs, gives identical per-request outcomes, executors and answers,
and identical ledger fingerprints (tests/determinism_scenario.py; how: p2pserve/sim/virtual.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(seed: int, hash_seed: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.determinism_scenario", str(seed)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_two_processes_same_seed_same_result() -> None:
    a, b = run(7, "1"), run(7, "2")
    assert a == b
    outcomes = Counter(v[0] for v in a["requests"].values())
    assert len(a["requests"]) == 40 and outcomes["ok"] < 40  # failures are part of the scenario
    assert sum(r for _, r in a["counters"].values()) > 0  # and executors rejected offers
    assert len(set(a["fingerprints"].values())) == 1  # every node agrees on the ledger
