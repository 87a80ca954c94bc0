"""``p2pserve audit``: replay a ledger and report every problem (thin CLI over ``audit.run``).

Exit 0 and a summary table (accounts, blocks, balances, supply) when everything is valid;
exit 1 and one line per problem (account, height, block hash, reason) otherwise; exit 2 when
the source cannot be read at all. ``--json`` prints the full report as one JSON object.

Offences (valid equivocation proofs: someone else signed two blocks at one height, and the
ledger froze them) are not problems with this data: they get their own ``offences`` section
after the summary (``"offences"`` in JSON) and the exit code stays 0, unless ``--strict``
asks for 1 when there are any.

``--compare URL`` (repeatable, with or without ``--api``) does not replay: it reads each
node's ``/p2pserve/ledger/heads``, prints each node's fingerprint and names every account on
which the nodes disagree; exit 0 when all agree, 1 when any disagree, 2 when a node cannot
be read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from p2pserve.cli.client import api_url, source_error
from p2pserve.cli.common import report as report_error
from p2pserve.cli.common import usage_error
from p2pserve.errors import StoreError
from p2pserve.identity import default_data_dir
from p2pserve.ledger import audit as audit_mod
from p2pserve.ledger import compare as compare_mod
from p2pserve.ledger.rules import fingerprint
from p2pserve.units import format_credits

__all__ = ["audit", "render", "render_comparison", "run_audit", "run_compare"]


def _credits(micro: int) -> str:
    return format_credits(micro)


def render(report: audit_mod.AuditReport, console: Console) -> None:
    """The human summary of a valid ledger."""
    table = Table(title=f"ledger {report.params.network_id}: {report.blocks} blocks, {len(report.state.accounts())} accounts")
    for col in ("account", "height", "free", "staked", "unbonding", "unclaimed", "frozen"):
        table.add_column(col, justify="left" if col == "account" else "right")
    for row in report.balances():
        table.add_row(
            str(row["account"]),
            str(row["height"]),
            _credits(row["free"]),
            _credits(row["staked"]),
            _credits(row["unbonding"]),
            _credits(row["unclaimed"]),
            "yes" if row["frozen"] else "",
        )
    console.print(table)
    t = report.state.totals()
    console.print(
        f"supply {_credits(t['supply'])} = free {_credits(t['free'])} + staked {_credits(t['staked'])} "
        f"+ unbonding {_credits(t['unbonding'])} + unclaimed {_credits(t['owed'])}"
    )
    console.print(f"fingerprint {fingerprint(report.state).hex()}")
    render_duels(report, console)


def render_duels(report: audit_mod.AuditReport, console: Console) -> None:
    """Verdict counts and the executors' ratings (nothing when no duel was judged)."""
    n = report.state.verdict_count()
    if not n:
        return
    void = len(report.state.void_orders())
    console.print(f"verdicts: {n}" + (f" ({void} void order(s): a requester re-signed a duel)" if void else ""))
    table = Table(title="ratings (Bradley-Terry, 1000 = the average executor, 95% interval)")
    for col in ("executor", "rating", "interval", "wins", "losses", "ties", "stake weight"):
        table.add_column(col, justify="left" if col == "executor" else "right")
    for peer, r in sorted(report.ratings().items(), key=lambda kv: -kv[1].rating):
        table.add_row(peer, f"{r.rating:.1f}", f"{r.low:.0f}-{r.high:.0f}", str(r.wins), str(r.losses), str(r.ties),
                      _credits(report.state.stake_of(peer)))
    console.print(table)


def render_offences(report: audit_mod.AuditReport) -> None:
    """The ``offences`` section: one line per proven equivocation (nothing when there are none)."""
    if not report.offences:
        return
    print(f"offences: {len(report.offences)} account(s) proven to have equivocated (frozen; recorded, not corruption)")
    for p in report.offences:
        print(p.line())


def run_audit(
    data_dir: Path | None = None,
    db: Path | None = None,
    api: str | None = None,
    json_out: bool = False,
    api_key: str | None = None,
    console: Console | None = None,
    strict: bool = False,
) -> int:
    """Run the audit and print its outcome; the exit code: 0 valid, 1 problems (or, with
    ``strict``, offences), 2 unreadable."""
    console = console or Console()
    if data_dir is None and db is None and api is None:
        data_dir = default_data_dir()
    try:
        report = audit_mod.run(data_dir=data_dir, db=db, api=api, api_key=api_key)
    except StoreError as exc:
        message = source_error(exc, api, api_key) if api is not None else str(exc)
        if json_out:
            print(json.dumps({"ok": False, "error": message}))
        else:
            report_error(message, exc=exc)
        return 2
    if json_out:
        print(json.dumps(report.to_json()))
    elif report.ok:
        render(report, console)
        render_offences(report)
    else:
        for p in report.problems:
            print(p.line())
        render_offences(report)
        print(f"{len(report.problems)} problem(s) in {report.blocks} blocks", file=sys.stderr)
    if not report.ok:
        return 1
    return 1 if strict and report.offences else 0


def render_comparison(comparison: compare_mod.Comparison) -> None:
    """One line per node (its fingerprint), one per disagreeing account, then the verdict."""
    for n in comparison.nodes:
        print(f"{n.source}: network {n.network_id}, {n.blocks} blocks, {len(n.heads)} accounts, fingerprint {n.fingerprint}")
    for d in comparison.disagreements:
        views = " | ".join(f"{src} " + ("-" if h is None else f"{h[0]} {h[1][:16]}") for src, h in d.heads.items())
        frozen = f" (frozen on {', '.join(d.frozen_on)})" if d.frozen_on else ""
        print(f"{d.account} {d.reason}: {views}{frozen}")
    for note in comparison.notes:
        print(f"note: {note}")
    if comparison.agree:
        print(f"all {len(comparison.nodes)} nodes agree")
    else:
        print(f"the nodes disagree on {len(comparison.disagreements)} account(s)", file=sys.stderr)


def run_compare(urls: list[str], api_key: str | None = None, json_out: bool = False) -> int:
    """Compare the heads of the nodes at ``urls``; the exit code (0 agree, 1 disagree, 2 unreadable)."""
    urls = list(dict.fromkeys(u.rstrip("/") for u in urls))  # one entry per node, in order

    def fail(message: str, exc: BaseException | None = None) -> int:
        if json_out:
            print(json.dumps({"agree": False, "error": message}))
        else:
            report_error(message, exc=exc)
        return 2

    if len(urls) < 2:
        return fail("--compare needs two nodes or more (repeat --compare, or add --api)")
    nodes = []
    for u in urls:
        try:
            nodes.append(compare_mod.load_heads(u, api_key))
        except StoreError as exc:
            return fail(source_error(exc, u, api_key), exc)
    comparison = compare_mod.compare_heads(nodes)
    if json_out:
        print(json.dumps(comparison.to_json()))
    else:
        render_comparison(comparison)
    return 0 if comparison.agree else 1


def audit(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", metavar="DIR", help="Node data dir (reads DIR/ledger.sqlite3); default $P2PSERVE_HOME or ~/.p2pserve."),
    ] = None,
    db: Annotated[Path | None, typer.Option("--db", metavar="FILE", help="A ledger SQLite file.")] = None,
    api: Annotated[
        str | None, typer.Option("--api", metavar="URL", help="A node's HTTP API root, e.g. http://127.0.0.1:5778.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    api_key: Annotated[
        str | None, typer.Option("--api-key", metavar="KEY", help="Bearer key for --api and --compare (the nodes' "
                                 "server_params.api_key).", envvar="P2PSERVE_API_KEY")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when the ledger records offences (proven equivocations), too.")
    ] = False,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            metavar="URL",
            help="A node's API root whose ledger heads to compare (repeat it; --api counts as one more). Instead of "
            "replaying, prints each node's fingerprint and every account they disagree on (a fork, a lagging "
            "node); exit 1 if any.",
        ),
    ] = None,
) -> int:
    """Replay every block: signatures, hash links, heights, claims, balances, supply, forks.
    With --compare: compare nodes' ledger heads instead."""
    if api is not None:
        api = api_url(api)
    if compare:
        if data_dir is not None or db is not None:
            raise usage_error("--compare reads nodes' APIs; use it with --api, not --data-dir or --db")
        code = run_compare([*([api] if api else []), *(api_url(u, "--compare") for u in compare)], api_key, json_out)
    else:
        code = run_audit(data_dir, db, api, json_out, api_key, strict=strict)
    if code:
        raise typer.Exit(code)
    return 0
