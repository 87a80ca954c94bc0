"""Every script in examples/ runs (smoke tests). openai_client.py runs in test_cli_e2e.py,
against a real node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_memory_cluster_example() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "memory_cluster.py"), "--requests", "6"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ledger fingerprints agree: True" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines()[1:7]]
    assert sum(int(r[2]) for r in rows) == 6  # every request executed exactly once


def test_every_example_has_a_smoke_test() -> None:
    covered = {"memory_cluster.py", "openai_client.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} <= covered
