"""What every `p2pserve` command shares (p2pserve/cli/__init__.py): `--version`, shell
completion, help that renders as written, one error format (`error: ...`, one line on
stderr) with exit 2 for usage errors and 1 for run-time failures, the same words for a node
that does not answer or answers 401 in every command that talks to a node, amounts in
credits, and `p2pserve models`.

Nodes here are a stub HTTP server on 127.0.0.1 (fast, any answer on demand) and, once, a
real `p2pserve join` process with a fake backend, whose ledger answers in micro-credits.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from p2pserve.cli import app
from p2pserve.testing.http_stub import LoopbackServer, QuietHandler
from p2pserve.testing.processes import read_banner, spawn_join, stop_processes

# every command that talks to a node's API, with its arguments
NODE_COMMANDS: list[list[str]] = [["ask", "hi"], ["status"], ["models"], ["stake", "1"], ["unstake", "1"], ["audit"]]


def run(*args: str, **kw: Any) -> Any:
    return CliRunner().invoke(app, list(args), **kw)


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return str(lines[0])


def squash(text: str) -> str:
    return "".join(text.split())


def test_version() -> None:
    r = run("--version")
    assert r.exit_code == 0
    assert r.stdout.strip() == f"p2pserve {metadata.version('p2pserve')}"


def test_shell_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    # typer finds the shell from the process tree (shellingham), which a background job or a
    # CI runner may not show: name it
    monkeypatch.setattr("typer.completion._get_shell_name", lambda: "bash")
    r = run("--show-completion", prog_name="p2pserve")
    assert r.exit_code == 0 and "_P2PSERVE_COMPLETE=complete_bash" in r.stdout
    r = run(env={"_P2PSERVE_COMPLETE": "complete_bash", "COMP_WORDS": "p2pserve mo", "COMP_CWORD": "1"}, prog_name="p2pserve")
    assert r.exit_code == 0 and r.stdout.split() == ["models"]
    assert "--install-completion" in run("--help").stdout


def _commands(group: TyperGroup, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    for name, cmd in group.commands.items():
        if isinstance(cmd, TyperGroup):
            yield from _commands(cmd, [*path, name])
        else:
            yield [*path, name], cmd


def _all_commands() -> list[tuple[list[str], Any]]:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    return list(_commands(root, []))


@pytest.mark.parametrize(("path", "cmd"), _all_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_help_renders_every_word(path: list[str], cmd: Any) -> None:
    """No help text is lost to markup (``[default: ...]`` in rich mode vanished before)."""
    r = run(*path, "--help", terminal_width=100)
    assert r.exit_code == 0, r.output
    shown = squash(r.stdout)
    for param in cmd.params:
        text = getattr(param, "help", None)
        if text:
            assert squash(text) in shown, f"{' '.join(path)}: help of {param.name} is not shown as written"
    assert squash((cmd.help or "").split("\n\n")[0]) in shown


def test_no_command_shows_the_help() -> None:
    for args in ([], ["keys"]):
        r = run(*args)
        assert r.exit_code == 2 and r.stdout.startswith(f"Usage: p2pserve {' '.join(args)}".rstrip()) and not r.stderr


def test_join_help_shows_its_defaults() -> None:
    out = squash(run("join", "--help").stdout)
    assert squash("[default: /ip4/0.0.0.0/tcp/4001;") in out and squash("[default: 127.0.0.1:5778]") in out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["ask"], "error: Missing argument 'prompt'. (see `p2pserve ask --help`)"),
        (["status", "--bogus"], "error: No such option: --bogus (see `p2pserve status --help`)"),
        (["unstake", "0"], "error: Invalid value for 'amount': 0.0 is not a positive amount of credits (the smallest is "
                           "0.000001) (see `p2pserve unstake --help`)"),
        (["jion"], "error: No such command 'jion'. Did you mean 'join'? (see `p2pserve --help`)"),
        (["status", "--api", "ftp://x"], "error: --api 'ftp://x' is not a node's API URL (e.g. http://127.0.0.1:5778)"),
        (["audit", "--db", "x", "--compare", "http://127.0.0.1:9"],
         "error: --compare reads nodes' APIs; use it with --api, not --data-dir or --db"),
        (["join", "--log-level", "[red]loud[/]"],
         "error: --log-level '[red]loud[/]' is not a log level (use one of debug, info, warning, error)"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], line: str) -> None:
    r = run(*args)
    assert r.exit_code == 2
    assert one_error_line(r) == line  # markup in a message is printed, not interpreted


def test_click_value_errors_are_one_line_exit_2() -> None:
    r = run("stake", "lots")
    assert r.exit_code == 2
    line = one_error_line(r)  # the reason's words are typer's
    assert line.startswith("error: Invalid value for 'amount': ") and line.endswith(" (see `p2pserve stake --help`)")


@pytest.fixture
def closed_url() -> Iterator[str]:
    """A loopback URL where nothing listens (the port is held, unlistened, by this test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("args", NODE_COMMANDS, ids=lambda a: a[0])
def test_no_node_answers_reads_the_same_everywhere(args: list[str], closed_url: str) -> None:
    r = run(*args, "--api", closed_url)
    assert r.exit_code == (2 if args[0] == "audit" else 1)  # audit: 2 = the source cannot be read
    assert one_error_line(r) == (f"error: no p2pserve node answers at {closed_url} (start one with `p2pserve join` "
                                 "or ./scripts/demo.sh, or pass --api URL)")


class _Stub(LoopbackServer):
    """A node API on 127.0.0.1 that requires ``Bearer k`` and answers ``routes`` (path ->
    (status, JSON)); anything else is 404."""

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        class Handler(QuietHandler):
            def answer(self) -> None:
                if self.headers.get("Authorization") != "Bearer k":
                    status, body = 401, {"error": {"message": "missing or invalid API key", "code": "invalid_api_key"}}
                else:
                    status, body = routes.get(self.path.split("?")[0], (404, {"error": {"message": "not found"}}))
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.answer()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer()

        super().__init__(Handler)


STATUS = {
    "peer_id": "12D3KooWSelfSelfSelfSelfSelfSelfSelfSelfSelfSelf1",
    "network_id": "devnet",
    "models": [{"name": "llama-8b", "running": 1, "queued": 0, "accepting": True, "price_per_1k": 0.25}],
    "ledger": {"stake_weight": 1500.0},
    "peers": [
        {"peer_id": "12D3KooWPeerAPeerAPeerAPeerAPeerAPeerAPeerAPeerA2", "models": ["llama-8b", "[q=1]odd"],
         "load": {"running": 2, "queued": 3}, "accepting": False, "stake": 1234.5},
        {"peer_id": "12D3KooWPeerBPeerBPeerBPeerBPeerBPeerBPeerBPeerB3", "models": ["llama-8b"],
         "prices": {"llama-8b": 0.1}, "load": {"running": 0, "queued": 0}, "accepting": True, "stake": 0.05},
    ],
}


@pytest.fixture(scope="module")
def stub() -> Iterator[_Stub]:
    server = _Stub({"/p2pserve/status": (200, STATUS)})
    yield server
    server.close()


@pytest.mark.parametrize("args", NODE_COMMANDS, ids=lambda a: a[0])
def test_401_reads_the_same_everywhere(args: list[str], stub: _Stub) -> None:
    code = 2 if args[0] == "audit" else 1
    r = run(*args, "--api", stub.url)
    assert r.exit_code == code
    assert one_error_line(r) == (f"error: the node at {stub.url} requires an API key (HTTP 401; pass --api-key KEY or set "
                                 "P2PSERVE_API_KEY)")
    r = run(*args, "--api", stub.url, "--api-key", "wrong")
    assert r.exit_code == code
    assert one_error_line(r) == (f"error: the node at {stub.url} refused the API key (HTTP 401; pass its "
                                 "server_params.api_key with --api-key KEY or P2PSERVE_API_KEY)")


def test_audit_compare_401_names_the_node(stub: _Stub, closed_url: str) -> None:
    r = run("audit", "--compare", stub.url, "--compare", closed_url)
    assert r.exit_code == 2
    assert one_error_line(r).startswith(f"error: the node at {stub.url} requires an API key (HTTP 401;")


def test_models_lists_every_offer_cheapest_first(stub: _Stub) -> None:
    r = run("models", "--api", stub.url, "--api-key", "k", "--json")
    assert r.exit_code == 0, r.output
    offers = json.loads(r.stdout)
    assert [(o["model"], o["peer_id"][-1], o["price_per_1k"], o["self"]) for o in offers] == [
        ("[q=1]odd", "2", None, False),
        ("llama-8b", "3", 0.1, False),
        ("llama-8b", "1", 0.25, True),
        ("llama-8b", "2", None, False),  # price unknown: last
    ]
    assert offers[1]["stake"] == 0.05 and offers[2]["stake"] == 1500.0
    r = run("models", "--api", stub.url, "--api-key", "k", terminal_width=100)
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if "llama-8b" in line or "odd" in line]
    assert len(rows) == 4
    assert "[q=1]odd" in rows[0] and "1,234.5" in rows[0]  # a model name with brackets shows as it is
    assert re.search(r"PeerB3 .*0\.1 .*0\.05", rows[1]) and re.search(r"Self1 \* .*0\.25 .*1,500", rows[2])
    assert "credits per 1000 output tokens" in r.stdout


def _wait_until_opened(api: str, timeout: float = 30.0) -> None:
    """Poll (bounded) until the node's ledger account is open and writable: a stake or
    unstake sent before can be refused with bad-open (it races the node's open block)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = httpx.get(f"{api}/p2pserve/ledger", headers={"Authorization": "Bearer k"}, timeout=5).json()
        if summary["opened"] and summary["writable"]:
            return
        time.sleep(0.1)
    raise AssertionError(f"the node's ledger account did not open within {timeout} s")


@pytest.mark.libp2p
@pytest.mark.processes
def test_a_real_node_in_credits(tmp_path: Path) -> None:
    """A real node: `models` from its status, stake/unstake refusals in credits (the ledger
    counts micro-credits), and its 401."""
    cfg = tmp_path / "node.yaml"
    cfg.write_text("models:\n  - model_path: echo-1\n    backend: fake\n    price_per_1k: 2.5\n"
                   "server_params:\n  api_key: k\nledger_params:\n  initial_staked: 3\n")
    proc = spawn_join(["--config", str(cfg), "--data-dir", str(tmp_path / "d"), "--listen", "/ip4/127.0.0.1/tcp/0",
                       "--api", "127.0.0.1:0"], stderr=subprocess.PIPE)
    try:
        api = read_banner(proc)["api"][0]
        _wait_until_opened(api)
        r = run("unstake", "100", "--api", api, "--api-key", "k")
        assert r.exit_code == 1
        assert one_error_line(r) == "error: cannot unstake 100 credits: insufficient stake (3 credits are staked)"
        r = run("models", "--api", api, "--api-key", "k", "--json")
        assert r.exit_code == 0, r.output
        (offer,) = json.loads(r.stdout)
        assert (offer["model"], offer["price_per_1k"], offer["self"], offer["stake"]) == ("echo-1", 2.5, True, 3.0)
        r = run("stake", "100000", "--api", api, "--api-key", "k")
        assert r.exit_code == 1
        assert one_error_line(r) == "error: cannot stake 100,000 credits: insufficient free credit (997 credits are free)"
        r = run("stake", "1.5", "--api", api, "--api-key", "k")
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("staked 1.5 credits: block ")
        r = run("status", "--api", api, "--api-key", "k")
        assert "free 995.5, staked 4.5, unbonding 0 credits" in r.stdout
        assert "echo-1 (running 0, queued 0, accepting, 2.5 credits/1k tokens)" in r.stdout
        r = run("status", "--api", api)
        assert r.exit_code == 1 and "requires an API key (HTTP 401;" in one_error_line(r)
    finally:
        stop_processes([proc])
