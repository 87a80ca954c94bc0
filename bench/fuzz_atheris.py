"""Coverage-guided fuzzing of every decoder with atheris (libFuzzer for Python), for a fixed budget.

Runs the targets of ``tests/test_fuzz_decoders.py`` (``TARGETS``: uvarint, frames,
framed_stream, message, block, body, gossip, sync, openai), each in its own process with
p2pserve instrumented for coverage, starting from that file's seed corpus, and prints per
target: executions, corpus size (inputs that found new coverage, seeds included), crashes.
A target that crashes is restarted for the rest of its budget; every crashing input is kept
under ``--out`` (``<target>/crash-*``). A crash becomes a regression test at the end of
``tests/test_fuzz_decoders.py`` (call ``TARGETS[name](data)`` with its bytes) and gets fixed.

atheris is not a dependency of p2pserve; install it into the venv first::

    .venv/bin/python -m pip install atheris

Usage::

    python bench/fuzz_atheris.py [--seconds 60] [--runs N] [--target NAME ...] [--out DIR] [--json FILE]

Exit status: 0 when no target crashed, 1 when one did, 2 when atheris is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
_MAX_RESTARTS = 20
_MAX_LEN = {"uvarint": 64, "frames": 4200, "framed_stream": 2048}
"""Smaller inputs where longer ones only slow a target down (framed_stream: one trio checkpoint
per chunk of at least one byte)."""


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _child(target: str, libfuzzer_args: list[str]) -> None:
    """Fuzz one target in this process (libFuzzer exits the process when done)."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["p2pserve"]):
        from tests.test_fuzz_decoders import TARGETS

    check = TARGETS[target]

    def one_input(data: bytes) -> None:
        check(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def _executions(log: str) -> int:
    """Inputs run, from libFuzzer's final stats (or its last progress line after a crash)."""
    final = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    if final is not None:
        return int(final.group(1))
    progress = re.findall(r"^#(\d+)\s", log, re.M)
    return int(progress[-1]) if progress else 0


def _write_seeds(target: str, corpus: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.test_fuzz_decoders import seed_corpus

    seeds = seed_corpus(target)
    for i, data in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(data)
    return len(seeds)


def _run_target(target: str, seconds: float, runs: int | None, out: Path, max_len: int) -> dict[str, object]:
    """Fuzz ``target`` for ``seconds`` (or ``runs`` executions), restarting after crashes."""
    corpus = out / target / "corpus"
    artifacts = out / target
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = _write_seeds(target, corpus)
    deadline = time.monotonic() + seconds
    executions = 0
    restarts = 0
    logs: list[str] = []
    while True:
        left = deadline - time.monotonic()
        if left < 1 or restarts > _MAX_RESTARTS or (runs is not None and executions >= runs):
            break
        args = [f"-max_total_time={max(1, int(left))}", f"-max_len={max_len}", "-timeout=10", "-rss_limit_mb=4096",
                f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-print_pcs=0", "-print_funcs=0", str(corpus)]
        if runs is not None:
            args.insert(0, f"-runs={runs - executions}")
        proc = subprocess.run([sys.executable, __file__, "--child", target, "--", *args], capture_output=True, text=True,
                              cwd=ROOT)
        log = proc.stderr
        logs.append(log)
        executions += _executions(log)
        if proc.returncode == 0:
            break
        restarts += 1
        if not any(p.name.startswith(_ARTIFACTS) for p in artifacts.iterdir()):
            # neither a clean end nor a recorded finding: the harness itself failed
            print(log[-3000:], file=sys.stderr)
            break
    crashes = sorted(p.name for p in artifacts.iterdir() if p.name.startswith(_ARTIFACTS))
    return {"target": target, "seconds": seconds, "executions": executions, "seeds": seeds,
            "corpus": sum(1 for _ in corpus.iterdir()), "crashes": len(crashes), "crash_files": crashes,
            "restarts": restarts}


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        target, rest = sys.argv[2], sys.argv[4:]
        _child(target, rest)
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.test_fuzz_decoders import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per target (wall-clock seconds)")
    parser.add_argument("--runs", type=int, default=None, help="stop a target after this many executions")
    parser.add_argument("--target", nargs="*", choices=sorted(TARGETS), default=sorted(TARGETS), help="targets to run")
    parser.add_argument("--out", type=Path, default=None, help="corpus and crash directory (default: a temporary one)")
    parser.add_argument("--max-len", type=int, default=16384, help="largest input libFuzzer generates (bytes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not _have_atheris():
        print("atheris is not installed: `.venv/bin/python -m pip install atheris` (it is not a p2pserve dependency)",
              file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="p2pserve-fuzz-"))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    rows = []
    print(f"{'target':<14} {'seconds':>8} {'executions':>11} {'exec/s':>8} {'corpus':>7} {'crashes':>8}")
    for target in args.target:
        t0 = time.monotonic()
        row = _run_target(target, args.seconds, args.runs, out, min(args.max_len, _MAX_LEN.get(target, args.max_len)))
        took = time.monotonic() - t0
        rows.append(row)
        execs = int(str(row["executions"]))
        print(f"{target:<14} {took:>8.0f} {execs:>11} {execs / max(took, 1e-9):>8.0f} {row['corpus']!s:>7} "
              f"{row['crashes']!s:>8}", flush=True)
        for name in row["crash_files"]:  # type: ignore[attr-defined]
            print(f"  {out / target / name}")
    print(f"corpus and findings under {out}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any(r["crashes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
