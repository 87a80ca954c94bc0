"""``p2pserve join``: run a node in front of local backends and join a network.

Every start-up mistake ends in one line on stderr (``error: ...``), exit 2 when the command
or config must change, 1 when something failed at run time; ``-v`` adds the traceback. In
order: the config (file and options, :func:`p2pserve.config.override`), the libp2p
addresses, the key, the sockets (:mod:`p2pserve.cli.preflight`), then the node itself, whose
failure arrives wrapped in trio's exception groups (:mod:`p2pserve.cli.failures`).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio
import typer

from p2pserve.cli.common import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    fail,
    log_format_option,
    log_level_option,
    resolve_data_dir,
    set_verbose,
    setup_logging,
)
from p2pserve.cli.failures import explain, leaf_exceptions, root_cause
from p2pserve.cli.preflight import check_addresses, check_bootstrap_not_self, check_sockets
from p2pserve.config import NodeConfig, load_config, override
from p2pserve.crypto import Signer
from p2pserve.errors import ConfigError, P2PServeError
from p2pserve.eventlog import event
from p2pserve.identity import KEY_FILE_NAME, load_or_create_identity

__all__ = ["apply_overrides", "join"]

log = logging.getLogger("p2pserve.node")


def apply_overrides(
    config: NodeConfig,
    *,
    bootstrap: list[str],
    listen: list[str],
    api: str | None,
    data_dir: Path | None,
) -> NodeConfig:
    """Command-line options win over the config file (lists replace, not extend). They are
    checked like the file's keys: a bad one raises ConfigError naming ``command line``, the
    key and the reason."""
    server: dict[str, Any] = {}
    if bootstrap:
        server["bootstrap"] = list(bootstrap)
    if listen:
        server["listen"] = list(listen)
    if api:
        server["api"] = api.removeprefix("http://")
    changes: dict[str, Any] = {"server_params": server} if server else {}
    if data_dir is not None:
        changes["data_dir"] = str(data_dir)
    return override(config, changes)


def join(
    config_file: Path | None = typer.Option(None, "--config", "-c", envvar="P2PSERVE_CONFIG", metavar="FILE",
                                            help="Node config YAML (see configs/node.example.yaml)."),
    bootstrap: list[str] = typer.Option([], "--bootstrap", "-b", metavar="MULTIADDR",
                                        help="A node to join through: /ip4/<ip>/tcp/<port>/p2p/<peer id> (its `listening:` "
                                             "line). Repeatable."),
    listen: list[str] = typer.Option([], "--listen", "-l", metavar="MULTIADDR",
                                     help="libp2p listen address [default: /ip4/0.0.0.0/tcp/4001; port 0: any free port]. "
                                          "Repeatable."),
    api: str | None = typer.Option(None, "--api", metavar="HOST:PORT", help="The HTTP API's address [default: 127.0.0.1:5778]."),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="P2PSERVE_HOME", metavar="DIR",
                                         help="Key and ledger directory [default: ~/.p2pserve]."),
    log_level: str | None = log_level_option(),
    log_format: str | None = log_format_option(),
    verbose_flag: bool = typer.Option(False, "--verbose", "-v",
                                      help="Debug logs, and on failure the traceback too (before the error line)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
) -> None:
    """Start a node and join the network. Runs until Ctrl-C / SIGTERM.

    stdout: the ``peer_id:``, ``key:``, ``listening:`` and ``api:`` lines once it is up (for
    scripts). stderr: the log, one line per event (docs/operations.md, "Logs")."""
    if verbose_flag:
        set_verbose(True)
    setup_logging(log_level, log_format, quiet=quiet)
    config = _config(config_file, bootstrap=bootstrap, listen=listen, api=api, data_dir=data_dir)
    signer = _signer(config)
    check_bootstrap_not_self(config.server_params.bootstrap, signer.peer_id, source=_source(config_file, bootstrap))
    check_sockets(config)
    try:
        trio.run(_run, config, signer)
    except (Exception, BaseExceptionGroup) as exc:
        if any(isinstance(e, KeyboardInterrupt) for e in leaf_exceptions(exc)):
            raise typer.Exit(130) from None
        cause = root_cause(exc)
        if cause is None:
            raise  # not an operator's mistake but a bug: its traceback is the report
        message, code = explain(cause, api=config.server_params.api)
        raise fail(message, code, exc=exc) from None


def _config(config_file: Path | None, *, bootstrap: list[str], listen: list[str], api: str | None,
            data_dir: Path | None) -> NodeConfig:
    """The checked config: file, then options, then the libp2p addresses (usage errors)."""
    try:
        config = apply_overrides(load_config(config_file), bootstrap=bootstrap, listen=listen, api=api, data_dir=data_dir)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE, exc=exc) from None
    check_addresses(config, listen_from=_source(config_file, listen), bootstrap_from=_source(config_file, bootstrap),
                    announce_from=_source(config_file, []))
    return config


def _source(config_file: Path | None, option: list[str]) -> str:
    """Where a list of addresses came from, as config errors name it."""
    return "command line" if option else str(config_file) if config_file else "defaults"


def _signer(config: NodeConfig) -> Signer:
    data_dir = resolve_data_dir(Path(config.data_dir) if config.data_dir else None)
    try:
        return load_or_create_identity(data_dir)
    except P2PServeError as exc:
        raise fail(str(exc), EXIT_RUNTIME, exc=exc) from None
    except OSError as exc:
        raise fail(f"cannot use the data dir {data_dir}: {exc.strerror or exc} (pass --data-dir DIR)", EXIT_RUNTIME,
                   exc=exc) from None


async def _run(config: NodeConfig, signer: Signer) -> None:
    from p2pserve.node import run_libp2p_node

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            node, url = await nursery.start(run_libp2p_node, config, signer)
            print(f"peer_id: {node.peer_id}")
            key = resolve_data_dir(Path(config.data_dir) if config.data_dir else None) / KEY_FILE_NAME
            print(f"key: {key} (this node's identity and its credit account: back it up, keep it private)")
            for addr in node.transport.listen_addrs():
                print(f"listening: {addr}")
            print(f"api: {url}")
            sys.stdout.flush()
            async for signum in signals:
                event(log, "shutting_down", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
