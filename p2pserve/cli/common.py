"""Shared CLI helpers: the one error format and its exit codes, data dir resolution, logging
(:func:`setup_logging`: the event log of :mod:`p2pserve.eventlog` on stderr).

Every command reports a failure the same way: one line on stderr, ``error: <what went
wrong> (<what to do>)``, and no traceback unless ``-v``. Exit codes, the same in every command:

* 0: done;
* 1 (:data:`EXIT_RUNTIME`): it failed at run time (no node answers, a port is in use, the
  node refused); running it again later or elsewhere may work;
* 2 (:data:`EXIT_USAGE`): the command itself is wrong (an option, an argument, a config
  value); it will fail again until it is changed.

``audit`` keeps its documented meanings on top of these: 1 when the ledger has problems, 2
when the source cannot be read.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from p2pserve.identity import default_data_dir
from p2pserve.units import format_credits, micro

__all__ = [
    "DEFAULT_API",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "LOG_LEVELS",
    "api_key_option",
    "api_option",
    "credits_text",
    "err_console",
    "fail",
    "log_format_option",
    "log_level_option",
    "one_line",
    "report",
    "resolve_data_dir",
    "set_log_options",
    "set_verbose",
    "setup_logging",
    "usage_error",
    "verbose",
]

DEFAULT_API = "http://127.0.0.1:5778"
EXIT_RUNTIME = 1
"""Exit code of a run-time failure."""
EXIT_USAGE = 2
"""Exit code of a usage error: a bad option, argument or config value."""

err_console = Console(stderr=True, highlight=False)

_verbose = [False]


def api_option() -> Any:
    """``--api URL`` (env ``P2PSERVE_API``), as every command that talks to a node takes it."""
    return typer.Option(DEFAULT_API, "--api", envvar="P2PSERVE_API", metavar="URL", help="The node's API URL.")


def api_key_option() -> Any:
    """``--api-key KEY`` (env ``P2PSERVE_API_KEY``): the node's ``server_params.api_key``."""
    return typer.Option(None, "--api-key", envvar="P2PSERVE_API_KEY", metavar="KEY",
                        help="Bearer key if the node requires one (its server_params.api_key).")


def admin_key_option() -> Any:
    """``--admin-key KEY`` (env ``P2PSERVE_ADMIN_KEY``): the node's ``server_params.admin_key``."""
    return typer.Option(None, "--admin-key", envvar="P2PSERVE_ADMIN_KEY", metavar="KEY",
                        help="The node's admin key (server_params.admin_key), if it has one; used instead of --api-key.")


def set_verbose(on: bool) -> None:
    """``-v``: failures print their traceback before the one-line error."""
    _verbose[0] = on


def verbose() -> bool:
    return _verbose[0]


def credits_text(amount: float) -> str:
    """An amount of credits (the API's floats) as people read it: ``1,234.5``, ``0.05``."""
    return format_credits(micro(amount))


def resolve_data_dir(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()).expanduser()


def one_line(message: str) -> str:
    """``message`` on one line: its non-blank lines joined with spaces."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def fail(message: str, code: int = EXIT_RUNTIME, *, exc: BaseException | None = None) -> typer.Exit:
    """Print ``error: <message>`` (one line) to stderr and return the Exit to raise.

    With ``-v`` and an ``exc``, its traceback comes first. ``message`` is printed as it is:
    rich markup in it (``[q=1]``, ``[default: x]``) is not interpreted.
    """
    report(message, exc=exc)
    return typer.Exit(code)


def report(message: str, *, exc: BaseException | None = None) -> None:
    """Print ``error: <message>`` as :func:`fail` does, for callers that pick the exit code later."""
    if exc is not None and verbose():
        err_console.print("".join(traceback.format_exception(exc)).rstrip(), markup=False, soft_wrap=True)
    err_console.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True)


def usage_error(message: str, *, exc: BaseException | None = None) -> typer.Exit:
    """:func:`fail` with :data:`EXIT_USAGE`."""
    return fail(message, EXIT_USAGE, exc=exc)


LOG_LEVELS = ("debug", "info", "warning", "error")

_log_options: dict[str, Any] = {"format": "human", "quiet": False}


def set_log_options(*, log_format: str | None = None, quiet: bool = False) -> None:
    """The root command's ``--log-format`` and ``-q`` (checked when a command logs)."""
    _log_options["format"] = log_format or "human"
    _log_options["quiet"] = quiet


def log_level_option() -> Any:
    """``--log-level LEVEL``: overrides ``-v`` / ``-q``."""
    return typer.Option(None, "--log-level", metavar="LEVEL",
                        help="debug, info, warning or error [default: info; debug with -v, warning with -q].")


def log_format_option() -> Any:
    """``--log-format human|json`` (env ``P2PSERVE_LOG_FORMAT``)."""
    return typer.Option(None, "--log-format", envvar="P2PSERVE_LOG_FORMAT", metavar="FORMAT",
                        help="human (one line per event: time, level, event, key=value) or json (one object per line) "
                             "[default: human].")


def setup_logging(level: str | None = None, log_format: str | None = None, *, quiet: bool = False) -> None:
    """Log events to stderr (:mod:`p2pserve.eventlog`) at ``level`` (one of
    :data:`LOG_LEVELS`), else DEBUG with ``-v``, WARNING with ``-q`` (``quiet`` or the
    root's), else INFO; in
    ``log_format`` (else the root's ``--log-format``, else human). A bad level or format is a
    usage error. libp2p's own loggers stay quiet unless DEBUG; tracebacks only with ``-v``."""
    from p2pserve.eventlog import LOG_FORMATS, configure

    if level is not None and level.lower() not in LOG_LEVELS:
        raise usage_error(f"--log-level {level!r} is not a log level (use one of {', '.join(LOG_LEVELS)})")
    fmt = log_format if log_format is not None else str(_log_options["format"])
    if fmt.lower() not in LOG_FORMATS:
        raise usage_error(f"--log-format {fmt!r} is not a log format (use one of {', '.join(LOG_FORMATS)})")
    if level is None:
        level = "debug" if verbose() else "warning" if quiet or _log_options["quiet"] else "info"
    configure(getattr(logging, level.upper()), fmt.lower(), tracebacks=verbose())
