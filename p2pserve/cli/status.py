"""``p2pserve status``: what a running node knows about the network (amounts in credits)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from p2pserve.cli.client import api_url, get_json
from p2pserve.cli.common import api_key_option, api_option, credits_text

__all__ = ["status"]


def status(
    api: str = api_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
    api_key: str | None = api_key_option(),
) -> None:
    """Show the node's peer ID, addresses and the peers it knows."""
    url = api_url(api)
    data = get_json(url, "/p2pserve/status", api_key=api_key)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()

    def line(key: str, value: str, style: str = "") -> None:
        console.print(Text.assemble((f"{key:<10}", "bold"), " ", (value, style)), highlight=False, soft_wrap=True)

    line("peer_id", data["peer_id"])
    line("network", data.get("network_id", "?"))
    for a in data.get("addrs", []):
        line("address", a)
    for m in data.get("models", []):
        line("model", f"{m['name']} (running {m['running']}, queued {m['queued']}, "
                      f"{'accepting' if m['accepting'] else 'busy'}, {credits_text(m['price_per_1k'])} credits/1k tokens)")
    if "served" in data:
        s = data["served"]
        line("served", f"{s['requests']} requests: {s['local']} local, {s['offloaded']} offloaded; "
                       f"{s['served_for_peers']} for peers; {s['failovers']} failovers, {s['failures']} failures")
    if "ledger" in data:
        lg = data["ledger"]
        line("ledger", f"free {credits_text(lg['free'])}, staked {credits_text(lg['staked'])}, "
                       f"unbonding {credits_text(lg['unbonding'])} credits; {lg['blocks']} blocks")
    duels = data.get("duels")
    if duels and any(duels.values()):
        line("duels", _duels_line(duels))
    off = data.get("offloading")
    if off and not off["possible"]:
        line("offload", f"not possible: {off['reason']}", "yellow")
    table = Table(title=f"{len(data['peers'])} peers (stake in credits)")
    for col in ("peer", "models", "running", "queued", "stake", "judge", "last seen (s)", "connected"):
        table.add_column(col)
    for p in data["peers"]:
        table.add_row(
            p["peer_id"][-12:],
            Text(", ".join(p["models"]) or "-"),
            str(p["load"]["running"]),
            str(p["load"]["queued"]),
            credits_text(p["stake"]),
            "yes" if p.get("judge") else "",
            f"{p['last_seen_s']:.1f}",
            "yes" if p.get("connected") else "no",
        )
    console.print(table)
    if data.get("ratings"):
        console.print(_ratings_table(data["ratings"]))


def _duels_line(d: dict[str, int]) -> str:
    return (f"started {d['started']} ({d['settled']} judged, {d['abandoned']} abandoned); "
            f"as executor won {d['won']}, lost {d['lost']}, tied {d['tied']}; judged {d['judged']}")


def _ratings_table(ratings: dict[str, dict[str, Any]]) -> Table:
    rt = Table(title="ratings from the ledger's verdicts (Bradley-Terry, 1000 = average, 95% interval)")
    for col in ("executor", "rating", "interval", "wins", "losses", "ties"):
        rt.add_column(col)
    for peer, r in sorted(ratings.items(), key=lambda kv: -kv[1]["rating"]):
        rt.add_row(peer[-12:], f"{r['rating']:.1f}", f"{r['low']:.0f}-{r['high']:.0f}", str(r["wins"]),
                   str(r["losses"]), str(r["ties"]))
    return rt
