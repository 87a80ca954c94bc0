"""Shared CLI helpers: data dir resolution, error reporting, logging."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from p2pserve.identity import default_data_dir

__all__ = ["DEFAULT_API", "api_url", "err_console", "fail", "resolve_data_dir", "setup_logging"]

DEFAULT_API = "http://127.0.0.1:5778"
err_console = Console(stderr=True)


def resolve_data_dir(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()).expanduser()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def api_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        value = "http://" + value
    return value.rstrip("/")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
