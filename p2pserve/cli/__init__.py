"""The ``p2pserve`` command line. Thin: each command builds config and calls ``trio.run``."""

from __future__ import annotations

import sys

import typer

from p2pserve.cli import ask, demo, join, keys, simulate, stake, status
from p2pserve.cli.audit import audit

__all__ = ["app", "main"]

app = typer.Typer(
    name="p2pserve",
    help="Decentralized LLM serving: join a network, ask it, audit its ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(keys.app, name="keys")
app.command("join")(join.join)
app.command("status")(status.status)
app.command("ask")(ask.ask)
app.command("demo")(demo.demo)
app.command("audit")(audit)
app.command("stake")(stake.stake)
app.command("unstake")(stake.unstake)
app.command("simulate")(simulate.simulate)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
