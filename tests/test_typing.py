"""`mypy --strict` on p2pserve/ and transports/ stays clean (STYLE rule 15).

The only errors allowed are the known false positive from the stale `trio-typing` stubs that
py-libp2p and multiaddr install: they shadow trio's own inline types and lack
`trio.TaskStatus`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")


def test_mypy_strict_has_no_new_errors() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    unexpected = [e for e in errors if 'Name "trio.TaskStatus" is not defined' not in e]
    assert unexpected == [], "\n".join(unexpected)
