"""``p2pserve stake AMOUNT`` / ``p2pserve unstake AMOUNT``: move the node's credit in and out of stake."""

from __future__ import annotations

import httpx
import typer

from p2pserve.cli.common import DEFAULT_API, api_url, fail


def _post(api: str, path: str, amount: float, api_key: str | None) -> None:
    url = api_url(api)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.post(f"{url}{path}", json={"amount": amount}, headers=headers, timeout=30)
    except httpx.ConnectError:
        raise fail(f"no p2pserve node answers at {url} (start one with `p2pserve join`, or pass --api)", code=2) from None
    except httpx.HTTPError as exc:
        raise fail(f"{url}: {exc}") from None
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        raise fail(f"HTTP {r.status_code}: {msg}")
    s = r.json()
    typer.echo(f"block: {s['block']}")
    typer.echo(f"free: {s['free']:.6f}  staked: {s['staked']:.6f}  unbonding: {s['unbonding']:.6f}")


API = typer.Option(DEFAULT_API, "--api", envvar="P2PSERVE_API", help="The node's API URL.")
KEY = typer.Option(None, "--api-key", envvar="P2PSERVE_API_KEY", help="Bearer key if the node requires one.")


def stake(amount: float = typer.Argument(..., min=0.000001, help="Credits to stake."), api: str = API, api_key: str | None = KEY) -> None:
    """Stake free credit: a higher stake makes the node likelier to be chosen for offloaded work."""
    _post(api, "/p2pserve/ledger/stake", amount, api_key)


def unstake(amount: float = typer.Argument(..., min=0.000001, help="Credits to unstake."), api: str = API, api_key: str | None = KEY) -> None:
    """Unstake credit; it becomes free after the network's unbonding delay."""
    _post(api, "/p2pserve/ledger/unstake", amount, api_key)
