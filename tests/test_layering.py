"""Layering (docs/architecture.md, "Layers"): pure modules import no trio/httpx/libp2p, even
transitively; the ledger stays below config, the API and the CLI; the wire layer imports only
itself, crypto and errors; only node.py, cli/ and sim/ import the transports package."""

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
    "p2pserve.hostnames",
    "p2pserve.units",
    "p2pserve.rng",
    "p2pserve.crypto",
    "p2pserve.identity",
    "p2pserve.config",
    "p2pserve.wire",
    "p2pserve.wire.codec",
    "p2pserve.wire.duel",
    "p2pserve.wire.framing",
    "p2pserve.wire.gossip",
    "p2pserve.wire.infer",
    "p2pserve.wire.limits",
    "p2pserve.wire.sync",
    "p2pserve.config_addrs",
    "p2pserve.jsonbody",
    "p2pserve.membership.ratelimit",
    "p2pserve.membership.redial",
    "p2pserve.membership.table",
    "p2pserve.membership.verified",
    "p2pserve.net.caps",
    "p2pserve.transport",
    "p2pserve.backends.base",
    "p2pserve.backends.metrics",
    "p2pserve.backends.openai_format",
    "p2pserve.backends.sse",
    "p2pserve.routing",
    "p2pserve.policies",
    "p2pserve.serving.receipts",
    "p2pserve.serving.events",
    "p2pserve.serving.offenders",
    "p2pserve.serving.offer",
    "p2pserve.serving.dispatch",
    "p2pserve.serving.router",
    "p2pserve.serving.tracer",
    "p2pserve.ledger.blocks",
    "p2pserve.ledger.state",
    "p2pserve.ledger.rules",
    "p2pserve.ledger.planners",
    "p2pserve.ledger.prepared",
    "p2pserve.ledger.forks",
    "p2pserve.ledger.pending",
    "p2pserve.ledger.payers",
    "p2pserve.ledger.compare",
    "p2pserve.duel",
    "p2pserve.duel.draw",
    "p2pserve.duel.judging",
    "p2pserve.duel.machine",
    "p2pserve.duel.ratings",
    "p2pserve.sim.batching",
    "p2pserve.sim.judge",
    "p2pserve.sim.metrics",
    "p2pserve.sim.profiles",
    "p2pserve.sim.scenario",
    "p2pserve.sim.strategies",
    "p2pserve.sim.workload",
    "p2pserve.sim.workload_parse",
]
FORBIDDEN = ("trio", "httpx", "libp2p", "transports", "hypercorn", "starlette", "sqlite3")


def _exists(mod: str) -> bool:
    rel = Path(*mod.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def _loaded_after_import(module: str) -> list[str]:
    """Every module in ``sys.modules`` after importing ``module`` in a fresh interpreter."""
    code = "import sys, importlib; importlib.import_module(%r); print('\\n'.join(sorted(sys.modules)))" % module
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


def test_pure_list_names_existing_modules() -> None:
    """A stale entry would guard nothing: add a module here when it exists."""
    assert [m for m in PURE if not _exists(m)] == []


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(module: str) -> None:
    bad = sorted({m.split(".")[0] for m in _loaded_after_import(module)} & set(FORBIDDEN))
    assert bad == [], f"{module} pulls in {bad}"


def _modules(package: str) -> list[str]:
    """Dotted names of every module in ``package`` (a directory under the repository root)."""
    root = ROOT / Path(*package.split("."))
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _p2pserve_imports(path: Path) -> set[str]:
    """The ``p2pserve`` modules a file imports anywhere (top level or inside functions)."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                names.add(node.module)
    return {n for n in names if n == "p2pserve" or n.startswith("p2pserve.")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


LEDGER_MUST_NOT_IMPORT = ("p2pserve.config", "p2pserve.api", "p2pserve.cli")
WIRE_MAY_IMPORT = ("p2pserve.wire", "p2pserve.crypto", "p2pserve.errors")


def test_ledger_imports_neither_config_api_nor_cli() -> None:
    """The ledger is below configuration and the entry points: it takes values, not config."""
    direct = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (PKG / "ledger").rglob("*.py")
        for name in _p2pserve_imports(path)
        if _under(name, LEDGER_MUST_NOT_IMPORT)
    }
    assert sorted(direct) == []
    transitive = {
        f"{module}: {name}"
        for module in _modules("p2pserve.ledger")
        for name in _loaded_after_import(module)
        if _under(name, LEDGER_MUST_NOT_IMPORT)
    }
    assert sorted(transitive) == []


def test_wire_imports_only_wire_crypto_and_errors() -> None:
    """Messages and framing are the bottom of the protocol stack: bytes in, messages out."""
    direct = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (PKG / "wire").rglob("*.py")
        for name in _p2pserve_imports(path)
        if name != "p2pserve" and not _under(name, WIRE_MAY_IMPORT)
    }
    assert sorted(direct) == []
    transitive = {
        f"{module}: {name}"
        for module in _modules("p2pserve.wire")
        for name in _loaded_after_import(module)
        if _under(name, ("p2pserve",)) and name != "p2pserve" and not _under(name, WIRE_MAY_IMPORT)
    }
    assert sorted(transitive) == []


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
