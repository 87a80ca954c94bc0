"""The ``p2pserve`` command line. Thin: each command builds config and calls ``trio.run``.

Conventions every command keeps (``tests/test_cli_conventions.py`` checks them):

* one error format: ``error: <what> (<what to do>)``, one line on stderr, click's usage
  errors included (:class:`_Root` reports them); a traceback only with ``-v``;
* exit codes: 0 done, 1 run-time failure, 2 usage error (:mod:`p2pserve.cli.common`);
* help is plain text (``rich_markup_mode=None``): ``[default: x]`` in a help string shows;
* ``p2pserve --version``; shell completion (``--install-completion``, ``--show-completion``);
* logs (of the commands that run a node) go to stderr, one line per event: ``-v`` adds
  debug lines, ``-q`` keeps warnings and errors only, ``--log-format json`` writes JSON lines
  (:mod:`p2pserve.eventlog`); stdout keeps what scripts parse.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import typer
from typer.core import TyperGroup

from p2pserve.cli import ask, demo, join, keys, models, simulate, stake, status
from p2pserve.cli.audit import audit
from p2pserve.cli.common import EXIT_RUNTIME, log_format_option, report, set_log_options, set_verbose

__all__ = ["app", "main", "version"]


def version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    try:
        return metadata.version("p2pserve")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        from p2pserve import __version__

        return __version__


class _Root(TyperGroup):
    """The root command: click's own errors (a missing argument, an unknown option, a bad
    value) are reported in the one format, with their exit code (2 for usage errors)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:  # click's ClickException and UsageError derive from it
            if type(exc).__name__ == "NoArgsIsHelpError":  # `p2pserve`, `p2pserve keys`: the help, as it is
                typer.echo(exc.format_message())
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            report(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            report("aborted")
            sys.exit(EXIT_RUNTIME)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="p2pserve",
    cls=_Root,
    help="Decentralized LLM serving: join a network, ask it, audit its ledger.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"p2pserve {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                      help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Debug logs, and on failure the traceback too (before the error line)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
    log_format: str | None = log_format_option(),
) -> None:
    """Decentralized LLM serving: join a network, ask it, audit its ledger."""
    set_verbose(verbose)
    set_log_options(log_format=log_format, quiet=quiet)


app.add_typer(keys.app, name="keys")
app.command("join")(join.join)
app.command("status")(status.status)
app.command("models")(models.models)
app.command("ask")(ask.ask)
app.command("demo")(demo.demo)
app.command("audit")(audit)
app.command("stake")(stake.stake)
app.command("unstake")(stake.unstake)
app.command("simulate")(simulate.simulate)


def main() -> None:
    """Console-script entry point (``p2pserve``, ``python -m p2pserve``)."""
    try:
        app(prog_name="p2pserve")
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
