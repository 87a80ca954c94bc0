"""``p2pserve stake AMOUNT`` / ``p2pserve unstake AMOUNT``: move the node's credit in and out of stake.

Amounts are credits, both typed and shown (the ledger counts micro-credits; see
:mod:`p2pserve.units`). When the ledger refuses (not enough free credit, not that much
staked), the message says so in credits, from the node's ``/p2pserve/ledger`` summary.
"""

from __future__ import annotations

import math
from typing import Any

import typer

from p2pserve.cli.client import api_url, check_response, error_text, get_json, post_json
from p2pserve.cli.common import admin_key_option, api_key_option, api_option, credits_text, fail
from p2pserve.units import micro

__all__ = ["stake", "unstake"]


def _amount(value: float) -> float:
    if not math.isfinite(value) or micro(value) < 1:
        raise typer.BadParameter(f"{value!r} is not a positive amount of credits (the smallest is 0.000001)")
    return value


def _refusal(url: str, api_key: str | None, unstake: bool, amount: float, code: str, message: str) -> str:
    """The ledger's refusal in credits (its own message counts micro-credits)."""
    verb = "unstake" if unstake else "stake"
    if code not in ("insufficient-funds", "unbonding", "insufficient-stake"):
        return f"the ledger refused to {verb} {credits_text(amount)} credits: {message}"
    s: dict[str, Any] = get_json(url, "/p2pserve/ledger", api_key=api_key)
    free, staked, unbonding = (credits_text(float(s.get(k) or 0)) for k in ("free", "staked", "unbonding"))
    if code == "insufficient-stake":
        return f"cannot unstake {credits_text(amount)} credits: insufficient stake ({staked} credits are staked)"
    if code == "unbonding":
        return (f"cannot stake {credits_text(amount)} credits yet: {free} credits are free and {unbonding} are "
                "still unbonding (free again after the network's unbonding delay)")
    return f"cannot stake {credits_text(amount)} credits: insufficient free credit ({free} credits are free)"


def _post(api: str, amount: float, api_key: str | None, admin_key: str | None, *, unstake: bool) -> None:
    """POST a stake or unstake with the admin key (else the API key); reads use the API key."""
    url = api_url(api)
    path = "/p2pserve/ledger/unstake" if unstake else "/p2pserve/ledger/stake"
    r = post_json(url, path, {"amount": amount}, api_key=admin_key or api_key)
    if r.status_code == 400:
        try:
            code = str(r.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            code = ""
        raise fail(_refusal(url, api_key, unstake, amount, code, error_text(r)))
    check_response(r, url, admin_key or api_key)
    s = r.json()
    typer.echo(f"{'unstaked' if unstake else 'staked'} {credits_text(amount)} credits: block {s['block']}")
    typer.echo(f"free: {s['free']:.6f}  staked: {s['staked']:.6f}  unbonding: {s['unbonding']:.6f}  (in credits)")


def stake(
    amount: float = typer.Argument(..., callback=_amount, help="Credits to stake (e.g. 5 or 0.5)."),
    api: str = api_option(),
    api_key: str | None = api_key_option(),
    admin_key: str | None = admin_key_option(),
) -> None:
    """Stake free credit: a higher stake makes the node likelier to be chosen for offloaded work."""
    _post(api, amount, api_key, admin_key, unstake=False)


def unstake(
    amount: float = typer.Argument(..., callback=_amount, help="Credits to unstake (e.g. 5 or 0.5)."),
    api: str = api_option(),
    api_key: str | None = api_key_option(),
    admin_key: str | None = admin_key_option(),
) -> None:
    """Unstake credit; it becomes free after the network's unbonding delay."""
    _post(api, amount, api_key, admin_key, unstake=True)
