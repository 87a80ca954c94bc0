"""``p2pserve models``: what the network serves, by whom, at what price (as one node sees it).

Built from the node's ``/p2pserve/status``: its own models (with their prices and load) and
the models each peer it knows announces. One offer per (model, node), sorted by model, then
price, then load. Prices are credits per 1000 output tokens; a peer whose status entry carries
no price (``/p2pserve/status`` lists only peers' model names) shows ``?`` (``null`` in JSON).
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from p2pserve.cli.client import api_url, get_json
from p2pserve.cli.common import api_key_option, api_option, credits_text

__all__ = ["models", "network_models"]


def _peer_prices(peer: dict[str, Any]) -> dict[str, float]:
    """A peer's prices where its status entry has them: ``models`` as objects with
    ``price_per_1k``, or a ``prices`` mapping (name -> credits per 1k tokens)."""
    prices = {str(k): float(v) for k, v in (peer.get("prices") or {}).items() if v is not None}
    for m in peer.get("models", []):
        if isinstance(m, dict) and m.get("price_per_1k") is not None:
            prices[str(m["name"])] = float(m["price_per_1k"])
    return prices


def network_models(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (model, node) offer in a ``/p2pserve/status`` JSON, as dicts: ``model``,
    ``peer_id``, ``self`` (this node), ``price_per_1k`` (credits, or None when unknown),
    ``running``, ``queued``, ``accepting``, ``stake`` (credits, or None), ``up`` (this node's
    models: whether the backend passed its last check; None for peers)."""
    offers: list[dict[str, Any]] = []
    me = str(status.get("peer_id", "?"))
    own_stake = (status.get("ledger") or {}).get("stake_weight")
    for m in status.get("models", []):
        offers.append({"model": m["name"], "peer_id": me, "self": True, "price_per_1k": m.get("price_per_1k"),
                       "running": m.get("running", 0), "queued": m.get("queued", 0), "accepting": m.get("accepting"),
                       "stake": own_stake, "up": m.get("up")})
    for p in status.get("peers", []):
        prices = _peer_prices(p)
        load = p.get("load") or {}
        for m in p.get("models", []):
            name = str(m["name"] if isinstance(m, dict) else m)
            offers.append({"model": name, "peer_id": p["peer_id"], "self": False, "price_per_1k": prices.get(name),
                           "running": load.get("running", 0), "queued": load.get("queued", 0),
                           "accepting": p.get("accepting"), "stake": p.get("stake"), "up": None})
    offers.sort(key=lambda o: (o["model"], o["price_per_1k"] is None, o["price_per_1k"] or 0.0, o["queued"], o["running"],
                               o["peer_id"]))
    return offers


def _table(offers: list[dict[str, Any]], status: dict[str, Any]) -> Table:
    nodes = len({o["peer_id"] for o in offers})
    names = len({o["model"] for o in offers})
    table = Table(title=Text(f"{names} model(s) served by {nodes} node(s) on {status.get('network_id', '?')}"),
                  caption="price: credits per 1000 output tokens; * this node; ? not reported")
    for col in ("model", "node", "price", "running", "queued", "accepting", "stake"):
        table.add_column(col, justify="left" if col in ("model", "node") else "right", no_wrap=col == "node")
    for o in offers:
        table.add_row(
            Text(o["model"]),
            "…" + o["peer_id"][-10:] + (" *" if o["self"] else ""),
            "?" if o["price_per_1k"] is None else credits_text(o["price_per_1k"]),
            str(o["running"]),
            str(o["queued"]),
            "down" if o["up"] is False else {True: "yes", False: "no"}.get(o["accepting"], "?"),
            "?" if o["stake"] is None else credits_text(o["stake"]),
        )
    return table


def models(
    api: str = api_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the offers as a JSON list."),
    api_key: str | None = api_key_option(),
) -> None:
    """List what the network serves: each model, the nodes serving it, their price and load."""
    url = api_url(api)
    status = get_json(url, "/p2pserve/status", api_key=api_key)
    offers = network_models(status)
    if as_json:
        typer.echo(json.dumps(offers, indent=2))
        return
    console = Console()
    if not offers:
        console.print("no node in reach serves a model yet (is any node serving one? see `p2pserve status`)",
                      markup=False, highlight=False)
        return
    console.print(_table(offers, status))
