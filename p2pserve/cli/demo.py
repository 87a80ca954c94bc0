"""``p2pserve demo``: a local network of N nodes on loopback, one ``p2pserve join`` process each.

Node 0 starts first; the others bootstrap from its multiaddr. Each node has its own data dir
(key and ledger survive restarts of the demo) and its API on 127.0.0.1:5778+i. A node config
``<config-dir>/node<i>.yaml`` is used when present (``configs/demo/`` ships three, all on the
embedded model); command-line addresses override its listen/api/bootstrap.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from p2pserve.cli.common import fail, resolve_data_dir
from p2pserve.testing.processes import read_banner, spawn_join, stop_processes

__all__ = ["demo"]

console = Console()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo(
    nodes: int = typer.Option(3, "--nodes", "-n", min=1, max=20, help="How many nodes to start."),
    config_dir: Path = typer.Option(Path("configs/demo"), "--config-dir", help="Directory with node<i>.yaml configs (optional)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Parent of the nodes' data dirs [default: ~/.p2pserve/demo]."),
    base_api_port: int = typer.Option(5778, "--api-port", help="API port of node 0; node i uses port + i when free."),
    log_level: str = typer.Option("warning", "--log-level", help="Log level of the nodes."),
    noisy: bool = typer.Option(False, "--noisy", help="Add a node that serves noise under the same model name (configs/demo/noisy.yaml)."),
    duel_rate: float | None = typer.Option(None, "--duel-rate", min=0.0, max=1.0, help="Share of node 0's requests dueled [default: its config's]."),
) -> None:
    """Start a local network of N nodes serving the embedded model; Ctrl-C stops it."""
    root = (data_dir or resolve_data_dir(None) / "demo").expanduser()
    procs: list[subprocess.Popen[str]] = []
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.update(now=True))
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress:
            configs = _configs(nodes, root, config_dir, noisy, duel_rate)
            apis = _start_nodes(progress, procs, configs, root, base_api_port, log_level)
            served = _wait_for_mesh(progress, apis, lambda: stopping["now"])
        _print_help(root, apis, served)
        while not stopping["now"]:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise fail(f"node{i} exited with code {p.returncode}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    finally:
        stop_processes(procs)
        console.print("network stopped")


def _configs(nodes: int, root: Path, config_dir: Path, noisy: bool, duel_rate: float | None) -> list[Path | None]:
    """Each node's config file (None: defaults): ``node<i>.yaml``, then ``noisy.yaml`` with
    ``--noisy``; with ``--duel-rate``, node 0's is copied into its data dir with that rate."""
    configs: list[Path | None] = [p if (p := config_dir / f"node{i}.yaml").exists() else None for i in range(nodes)]
    if noisy:
        configs.append(config_dir / "noisy.yaml")
    if duel_rate is not None:
        raw = yaml.safe_load(configs[0].read_text()) if configs[0] is not None else {}
        raw.setdefault("server_params", {})["duel_rate"] = duel_rate
        merged = root / "node0" / "demo-config.yaml"
        merged.parent.mkdir(parents=True, exist_ok=True)
        merged.write_text(yaml.safe_dump(raw))
        configs[0] = merged
    return configs


def _start_nodes(
    progress: Progress, procs: list[subprocess.Popen[str]], configs: list[Path | None], root: Path, base_api_port: int,
    log_level: str,
) -> list[str]:
    """Start the nodes one after another (each bootstrapping from node 0); their API URLs."""
    task = progress.add_task("starting nodes", total=len(configs))
    apis: list[str] = []
    bootstrap: str | None = None
    for i, cfg in enumerate(configs):
        port = base_api_port + i if _port_free(base_api_port + i) else _free_port()
        cmd = ["--data-dir", str(root / f"node{i}"), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", f"127.0.0.1:{port}",
               "--log-level", log_level]
        if cfg is not None:
            cmd += ["--config", str(cfg)]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        proc = spawn_join(cmd)
        procs.append(proc)
        banner = read_banner(proc)
        apis.append(banner["api"][0])
        if bootstrap is None:
            bootstrap = banner["listening"][0]
        progress.update(task, advance=1, description=f"node{i} {banner['peer_id'][0][-8:]} up")
    return apis


def _wait_for_mesh(progress: Progress, apis: list[str], stopping: Callable[[], bool], timeout: float = 30.0) -> list[list[str]]:
    """Wait (bounded) until every node lists every other; the models each node serves."""
    task = progress.add_task("waiting for every node to see the others", total=len(apis))
    served: list[list[str]] = [[] for _ in apis]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        seen = 0
        for i, api in enumerate(apis):
            try:
                st = httpx.get(f"{api}/p2pserve/status", timeout=2).json()
                served[i] = [m["name"] for m in st["models"]]
                seen += len(st["peers"]) == len(apis) - 1
            except (httpx.HTTPError, ValueError, KeyError):
                pass
        progress.update(task, completed=seen)
        if seen == len(apis):
            break
        time.sleep(0.3)
    return served


def _print_help(root: Path, apis: list[str], served: list[list[str]]) -> None:
    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    say(f"\n[bold green]{len(apis)} nodes running[/] (data in {root})")
    for i, (api, models) in enumerate(zip(apis, served, strict=True)):
        say(f"  node{i}: {api}  " + (f"serves {', '.join(models)}" if models else "gateway: serves nothing, offloads every request"))
    say("\nAsk the network from another terminal:")
    say(f'  .venv/bin/p2pserve ask "What is the capital of France?" --api {apis[0]}')
    say(f"  .venv/bin/p2pserve status --api {apis[0]}")
    say(f"  .venv/bin/p2pserve audit --api {apis[0]}")
    say(f"  any OpenAI client with base_url={apis[0]}/v1")
    say("\nCtrl-C stops the network.")
