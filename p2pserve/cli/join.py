"""``p2pserve join``: run a node in front of local backends and join a network."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import trio
import typer

from p2pserve.cli.common import fail, resolve_data_dir, setup_logging
from p2pserve.config import NodeConfig, load_config, override
from p2pserve.errors import P2PServeError
from p2pserve.identity import load_or_create_identity


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
    config_file: Path | None = typer.Option(None, "--config", "-c", envvar="P2PSERVE_CONFIG", help="Node config YAML (see configs/node.example.yaml)."),
    bootstrap: list[str] = typer.Option([], "--bootstrap", "-b", help="Multiaddr (with /p2p/<id>) of a node to join through. Repeatable."),
    listen: list[str] = typer.Option([], "--listen", "-l", help="libp2p listen multiaddr [default: /ip4/0.0.0.0/tcp/4001]. Repeatable."),
    api: str | None = typer.Option(None, "--api", help="HOST:PORT for the HTTP API [default: 127.0.0.1:5778]."),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="P2PSERVE_HOME", help="Key and ledger directory [default: ~/.p2pserve]."),
    log_level: str = typer.Option("warning", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Start a node and join the network. Runs until Ctrl-C / SIGTERM."""
    setup_logging(log_level)
    try:
        config = apply_overrides(load_config(config_file), bootstrap=bootstrap, listen=listen, api=api, data_dir=data_dir)
        signer = load_or_create_identity(resolve_data_dir(Path(config.data_dir) if config.data_dir else None))
    except P2PServeError as exc:
        raise fail(str(exc)) from None
    try:
        trio.run(_run, config, signer)
    except P2PServeError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot start node: {exc}") from None


async def _run(config: NodeConfig, signer: object) -> None:
    from p2pserve.node import run_libp2p_node

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            node, url = await nursery.start(run_libp2p_node, config, signer)
            print(f"peer_id: {node.peer_id}")
            for addr in node.transport.listen_addrs():
                print(f"listening: {addr}")
            print(f"api: {url}")
            sys.stdout.flush()
            async for _ in signals:
                print("shutting down", file=sys.stderr)
                nursery.cancel_scope.cancel()
                break
