"""Summarise a py-spy ``raw`` (collapsed stacks) profile: where a node's CPU goes.

``python bench/profile_summary.py node_a.txt [--top 30] [--under FUNC]`` prints the share of
samples per leaf function (self time), per inclusive function, and per package (the
innermost frame outside the standard library decides it), so a profile from
``bench/serve_overhead.py --spy DIR`` can be read without a flame graph viewer.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def parse(path: Path) -> list[tuple[list[str], int]]:
    """``(frames outermost first, sample count)`` per line of a collapsed-stack file."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def _package(frame: str) -> str:
    m = _FRAME.match(frame)
    file = m.group("file") if m else frame
    if file.startswith("<frozen") or "/" not in file:
        return "stdlib"
    return file.split("/")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--under", help="only samples whose stack contains this substring")
    opts = ap.parse_args()
    stacks = parse(opts.profile)
    if opts.under:
        stacks = [(s, n) for s, n in stacks if any(opts.under in f for f in s)]
    total = sum(n for _, n in stacks) or 1
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    for frames, n in stacks:
        leaf[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        owner = next((_package(f) for f in reversed(frames) if _package(f) != "stdlib"), "stdlib")
        pkg[owner] += n
    print(f"{total} samples")
    for title, counter in (("package (innermost non-stdlib frame)", pkg), ("self", leaf), ("inclusive", incl)):
        print(f"\n-- {title}")
        for name, n in counter.most_common(opts.top):
            print(f"{100 * n / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
