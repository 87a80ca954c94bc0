"""Chaos run, full size: six ``p2pserve join`` processes on 127.0.0.1 under streaming load.

A bootstrap node started without ``--bootstrap``, a gateway (no model, always offloads)
and four executors in front of fake backends (in-process, 50 ms to the first token, 40 ms
per token, so a 24-token stream lasts about a second); six clients stream chat completions
through the gateway the whole time. Then: SIGKILL two executors, each while it is
mid-answer; restart the first (same data dir and ports); SIGSTOP a third mid-answer for
20 s, then SIGCONT; SIGKILL the bootstrap node, wait until every node forgot it, restart
it. Checked and printed: requests sent / answered / failed clearly / bad (a hang or a cut
stream: must be 0), credit before and after on every node (supply, balances), every
node's ``p2pserve audit --api`` and ``p2pserve audit --compare`` over all of them, time to
the full mesh after the bootstrap restart, time to one fingerprint after the load, and how
fast the restarted executor's new blocks reached every peer (issue 11, item 5).
Run: ``.venv/bin/python bench/chaos.py [--stop 20] [--interval 2] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.testing.chaos import ChaosNode  # noqa: E402
from p2pserve.testing.chaos_run import ChaosParams, run_chaos  # noqa: E402


def cli_checks(nodes: list[ChaosNode]) -> None:
    """``p2pserve audit --api`` on every live node, then ``--compare`` across them (exit 0 each)."""
    for n in nodes:
        r = subprocess.run([sys.executable, "-m", "p2pserve", "audit", "--api", n.api, "--json"],
                           capture_output=True, text=True, timeout=120)
        report = json.loads(r.stdout)
        t = report["totals"]
        print(f"  audit {n.name}: exit {r.returncode}, ok {report['ok']}, supply {t['supply'] / 1e6:g}, "
              f"{report['blocks']} blocks")
        if r.returncode != 0:
            raise SystemExit(f"audit failed on {n.name}: {report.get('problems')}")
    compare = [a for n in nodes for a in ("--compare", n.api)]
    r = subprocess.run([sys.executable, "-m", "p2pserve", "audit", *compare], capture_output=True, text=True, timeout=120)
    print(f"  audit --compare: exit {r.returncode}: {r.stdout.strip().splitlines()[-1]}")
    if r.returncode != 0:
        raise SystemExit(r.stdout + r.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stop", type=float, default=20.0, help="seconds the third executor stays SIGSTOPped")
    ap.add_argument("--interval", type=float, default=2.0, help="status_interval (peer_ttl is 3x)")
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--keep", metavar="DIR", help="keep data dirs and logs in DIR (default: a temp dir)")
    opts = ap.parse_args()
    root = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="p2pserve-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    params = ChaosParams(executors=4, killed=2, stop_s=opts.stop, workers=opts.workers,
                         status_interval=opts.interval, peer_ttl=3 * opts.interval)
    print(f"chaos run in {root}")
    res = run_chaos(root, params, at_end=cli_checks)
    s = res.summary()
    print(json.dumps(s, indent=1))
    print(f"requests: {s['sent']} sent, {s['answered']} answered, {s['failed_clearly']} failed clearly "
          f"({', '.join(f'{k}: {v}' for k, v in s['failure_kinds'].items()) or 'none'}), {s['bad']} bad")
    print(f"mid-stream at a SIGKILL: {s['mid_stream_killed']} request(s), ended as {s['mid_stream_outcomes']}")
    print(f"credit: genesis supply {s['genesis_supply']:g}; before {sorted(set(s['supply_before']))}, "
          f"after {sorted(set(s['supply_after']))}, balances after {sorted(set(s['balances_after']))}; "
          f"audits ok: {s['audits_ok']}")
    print(f"full mesh {s['mesh_after_bootstrap_restart_s']} s after the restarted bootstrap node was up "
          f"(its start-up: {s['bootstrap_start_s']} s); one fingerprint {s['same_fingerprint_s']} s after the load "
          f"({s['fingerprints_after']})")
    print(f"restarted executor: writable {s['restart_writable_s']} s after its restart; its new blocks reached every "
          f"peer in {s['restarted_block_lag']} (untouched executor: {s['steady_block_lag']})")
    for b in res.bad:
        print("BAD:", b)
    if res.bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
