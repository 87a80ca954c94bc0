"""bench/membership_scale.py runs (a smoke test at a tiny size; the benchmark is in
docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_membership_scale_bench_runs(tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "bench" / "membership_scale.py"), "--nodes", "4", "8", "--seconds", "5",
           "--json", str(out_json), "--plot", str(tmp_path / "cost.png")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out_json.read_text())
    assert [(r["nodes"], r["know_all"]) for r in rows] == [(4, 4), (8, 8)]
    assert all(r["peak_rss_mib"] > 0 and r["delivered"] > 0 and not r["without_ledger"] for r in rows)
    assert (tmp_path / "cost.png").stat().st_size > 0
    assert "know all" in out.stdout


def test_membership_scale_bench_without_ledger(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "membership_scale.py"), "--nodes", "6", "--seconds", "5", "--without-ledger",
           "--json", str(tmp_path / "rows.json")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["without_ledger"] and row["know_all"] == 6
