"""Layering (DESIGN §1): pure modules import no trio/httpx/libp2p, even transitively;
only node.py, cli/ and sim/ import the transports package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "p2pserve"

PURE = [
    "p2pserve.errors",
    "p2pserve.crypto",
    "p2pserve.identity",
    "p2pserve.config",
    "p2pserve.wire",
    "p2pserve.wire.codec",
    "p2pserve.wire.framing",
    "p2pserve.wire.messages",
    "p2pserve.wire.limits",
    "p2pserve.membership.table",
    "p2pserve.transport",
    "p2pserve.backends.base",
    "p2pserve.backends.metrics",
    "p2pserve.routing",
    "p2pserve.policies",
    "p2pserve.serving.receipts",
    "p2pserve.serving.events",
    "p2pserve.ledger.blocks",
    "p2pserve.ledger.rules",
    "p2pserve.duel.machine",
]
FORBIDDEN = ("trio", "httpx", "libp2p", "transports", "hypercorn", "starlette", "sqlite3")


def _exists(mod: str) -> bool:
    rel = Path(*mod.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


@pytest.mark.parametrize("module", [m for m in PURE if _exists(m)])
def test_pure_module_imports_no_io_library(module: str) -> None:
    code = (
        "import sys, importlib; importlib.import_module(%r); "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & set(%r)); print(','.join(bad))"
    ) % (module, FORBIDDEN)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_assembly_and_entry_points_import_transports() -> None:
    allowed = {PKG / "node.py"}
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if path in allowed or rel.parts[0] in ("cli", "sim"):
            continue
        if "transports" in _imports(path):
            offenders.append(str(rel))
    assert offenders == []


def test_transports_do_not_import_node_logic() -> None:
    for path in (ROOT / "transports").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[:2] != ["p2pserve", "node"], f"{path.name} imports the node"


def test_only_the_clock_module_reads_the_wall_clock() -> None:
    """Same seed, same result: node logic takes a Clock; ``time.time`` (and friends) appear in
    ``p2pserve/clock.py`` alone."""
    wall = {("time", "time"), ("time", "time_ns"), ("datetime", "now"), ("datetime", "utcnow"), ("date", "today")}
    offenders = []
    for root in (PKG, ROOT / "transports"):
        for path in root.rglob("*.py"):
            if path == PKG / "clock.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (node.value.id, node.attr) in wall:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                if isinstance(node, ast.ImportFrom) and node.module == "time" and any(a.name in ("time", "time_ns") for a in node.names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_no_unseeded_random_streams() -> None:
    """Every random choice draws from a seeded stream (``p2pserve.rng.derive``): no
    ``random.Random()`` without a seed, and no use of the global ``random`` functions."""
    offenders = []
    global_fns = {"random", "randint", "randrange", "choice", "choices", "shuffle", "sample", "uniform", "getrandbits", "randbytes"}
    for root in (PKG, ROOT / "transports"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                f = node.func
                if isinstance(f.value, ast.Name) and f.value.id == "random":
                    if f.attr == "Random" and not node.args and not node.keywords:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} unseeded random.Random()")
                    elif f.attr in global_fns:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} global random.{f.attr}()")
    assert offenders == []
