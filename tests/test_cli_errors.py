"""Start-up mistakes end in one line a newcomer can act on (docs/operations.md lists them).

Each mistake runs through the real CLI: `p2pserve join` as a child process where what is
pinned is the process's whole stderr (one line, no traceback) or a socket held by the test,
typer's CliRunner where the mistake is refused before anything starts. Exit codes: 2 when
the command or config must change, 1 when something failed at run time. Loopback only.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from typer.testing import CliRunner

from p2pserve.cli import app
from p2pserve.cli.failures import explain, leaf_exceptions, root_cause
from p2pserve.config_addrs import as_multiaddr, check_bootstrap, check_listen
from p2pserve.errors import ConfigError, StoreError, TransportError

PEER = "12D3KooWLQLXqEGffGJ3DUbSJuDWj1q8c7czTD9H6osbjfkf2zTt"
"""A well-formed Ed25519 peer ID (nobody's: no test dials it)."""


def join(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``p2pserve join ARGS`` as a child process that is expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "p2pserve", "join", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "80"})


def only_line(stderr: str) -> str:
    """The one line on stderr (fails when there are more, or a traceback)."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def invoke(*args: str) -> tuple[int, str]:
    """``p2pserve ARGS`` through CliRunner: the exit code and the one stderr line."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, only_line(result.stderr)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback TCP port someone else (this test) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# -- refused at start: the sockets ------------------------------------------------------------


@pytest.mark.processes
def test_api_port_in_use_names_the_address(tmp_path: Path, held_port: int) -> None:
    r = join("--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", f"127.0.0.1:{held_port}")
    assert r.returncode == 1
    assert only_line(r.stderr) == (f"error: API address 127.0.0.1:{held_port} is in use "
                                   "(another p2pserve node? pass --api HOST:PORT)")


@pytest.mark.processes
def test_libp2p_port_in_use_names_the_address(tmp_path: Path, held_port: int) -> None:
    r = join("--data-dir", str(tmp_path), "--listen", f"/ip4/127.0.0.1/tcp/{held_port}", "--api", "127.0.0.1:0")
    assert r.returncode == 1
    assert only_line(r.stderr) == (f"error: listen address /ip4/127.0.0.1/tcp/{held_port} is in use (another p2pserve "
                                   "node? pass --listen /ip4/127.0.0.1/tcp/PORT, or port 0 for any free port)")


def test_api_port_taken_after_the_check_is_still_named(held_port: int) -> None:
    """The HTTP server's own bind failure (a port taken between the check and the bind)
    reaches the CLI as a bare OSError in an exception group: it still names the API."""
    from p2pserve.api.server import serve_asgi

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never called")

    with pytest.raises(OSError) as caught:
        trio.run(serve_asgi, app, "127.0.0.1", held_port)
    assert caught.value.errno == errno.EADDRINUSE
    group = ExceptionGroup("node", [ExceptionGroup("api", [caught.value])])
    cause = root_cause(group)
    assert cause is caught.value
    assert explain(cause, api=f"127.0.0.1:{held_port}") == (
        f"API address 127.0.0.1:{held_port} is in use (another p2pserve node? pass --api HOST:PORT)", 1)


# -- refused at start: the addresses (usage errors) ---------------------------------------------


@pytest.mark.processes
def test_listen_host_port_is_not_a_multiaddr(tmp_path: Path) -> None:
    r = join("--data-dir", str(tmp_path), "--listen", "127.0.0.1:1234")
    assert r.returncode == 2
    assert only_line(r.stderr) == ("error: command line: server_params.listen: must be multiaddrs like "
                                   "/ip4/0.0.0.0/tcp/4001: '127.0.0.1:1234' (write /ip4/127.0.0.1/tcp/1234)")
    assert list(tmp_path.iterdir()) == []  # refused before a key was made


def test_listen_malformed_multiaddr(tmp_path: Path) -> None:
    code, line = invoke("join", "--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.1:1234")
    assert code == 2
    assert line == ("error: command line: listen address '/ip4/127.0.0.1:1234' is not /ip4/<ip>/tcp/<port> "
                    "(or /ip6/...): write /ip4/127.0.0.1/tcp/1234")


def test_listen_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("server_params:\n  listen: ['/ip4/127.0.0.1/udp/4001']\n")
    code, line = invoke("join", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert code == 2
    assert line == (f"error: {cfg}: listen address '/ip4/127.0.0.1/udp/4001' is not /ip4/<ip>/tcp/<port> "
                    "(or ip6, dns): e.g. /ip4/0.0.0.0/tcp/4001")


def test_bootstrap_host_port(tmp_path: Path) -> None:
    code, line = invoke("join", "--data-dir", str(tmp_path), "--bootstrap", "127.0.0.1:35005")
    assert code == 2
    assert line == ("error: command line: server_params.bootstrap: each address must end in /p2p/<peer id>: "
                    "'127.0.0.1:35005' (write /ip4/127.0.0.1/tcp/35005/p2p/<peer id>: the `listening:` line the "
                    "node you join printed)")
    assert list(tmp_path.iterdir()) == []


def test_bootstrap_without_p2p(tmp_path: Path) -> None:
    code, line = invoke("join", "--data-dir", str(tmp_path), "--bootstrap", "/ip4/127.0.0.1/tcp/35005")
    assert code == 2
    assert line == ("error: command line: server_params.bootstrap: each address must end in /p2p/<peer id>: "
                    "'/ip4/127.0.0.1/tcp/35005' (add /p2p/<peer id>: the `listening:` line the node you join printed)")


@pytest.mark.parametrize("peer", ["garbage", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", PEER[:-1]])
def test_bootstrap_bad_peer_id(tmp_path: Path, peer: str) -> None:
    addr = f"/ip4/127.0.0.1/tcp/35005/p2p/{peer}"
    code, line = invoke("join", "--data-dir", str(tmp_path), "--bootstrap", addr)
    assert code == 2
    assert line == (f"error: command line: bootstrap address {addr!r}: {peer!r} is not a p2pserve peer ID (those start "
                    "with 12D3KooW; copy the `listening:` line the node you join printed)")
    assert list(tmp_path.iterdir()) == []


def test_bootstrap_from_itself(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "new", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    peer = result.stdout.split()[1]
    addr = f"/ip4/127.0.0.1/tcp/35005/p2p/{peer}"
    code, line = invoke("join", "--data-dir", str(tmp_path), "--bootstrap", addr)
    assert code == 2
    assert line == (f"error: command line: bootstrap address {addr!r} is this node itself (the key in its data dir); "
                    "bootstrap from another node's `listening:` address")


def test_keys_new_over_an_existing_key(tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["keys", "new", "--data-dir", str(tmp_path)]).exit_code == 0
    code, line = invoke("keys", "new", "--data-dir", str(tmp_path))
    assert code == 2
    assert line == (f"error: {tmp_path / 'identity.key'}: a key file already exists (`p2pserve keys show` prints its "
                    "peer ID; --force replaces it, and its peer ID and credits are lost)")


@pytest.mark.processes
def test_base_url_without_scheme(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("models:\n  - model_path: m\n    base_url: localhost:8000/v1\n")
    r = join("--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2
    assert only_line(r.stderr) == (f"error: {cfg}: models[0].base_url: must start with http:// or https:// "
                                   "(got 'localhost:8000/v1')")


def test_judge_model_not_served(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("models: []\nserver_params:\n  judge: true\n  judge_model: nope\n")
    code, line = invoke("join", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert code == 2
    assert line == (f"error: {cfg}: server_params.judge_model: 'nope' is not one of this node's models "
                    "(models[].model_path: none)")


def test_bad_log_level(tmp_path: Path) -> None:
    code, line = invoke("join", "--data-dir", str(tmp_path), "--log-level", "loud")
    assert code == 2
    assert line == "error: --log-level 'loud' is not a log level (use one of debug, info, warning, error)"


def test_data_dir_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    data = tmp_path / "file" / "node"
    code, line = invoke("join", "--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0")
    assert code == 1
    assert line == f"error: cannot use the data dir {data}: Not a directory (pass --data-dir DIR)"


# -- failures inside the running node: trio's exception groups, unwrapped -------------------------


@pytest.mark.processes
def test_failure_inside_the_node_is_one_line_and_v_adds_the_traceback(tmp_path: Path) -> None:
    """A corrupt ledger file fails inside trio.run, where the node's nurseries wrap it in
    exception groups: one line without -v; with -v the traceback first, the same line last."""
    (tmp_path / "ledger.sqlite3").write_bytes(b"not a database " * 10)
    args = ("--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0")
    expected = f"error: ledger store {tmp_path / 'ledger.sqlite3'}: file is not a database"
    r = join(*args)
    assert r.returncode == 1
    assert only_line(r.stderr) == expected
    r = join(*args, "-v")
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "ExceptionGroup" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == expected


def _nested_failure(*errors: BaseException) -> BaseException:
    """What trio.run raises when tasks in nested nurseries fail with ``errors``."""

    async def raise_(e: BaseException) -> None:
        raise e  # at once: every task fails before the first failure cancels the others

    async def main() -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(trio.sleep_forever)
            async with trio.open_nursery() as inner:
                for e in errors:
                    inner.start_soon(raise_, e)

    with pytest.raises(BaseException) as caught:
        trio.run(main)
    return caught.value


def test_root_cause_unwraps_nested_groups() -> None:
    config_error = ConfigError("f.yaml: bad")
    group = _nested_failure(OSError(errno.EACCES, "Permission denied"), config_error)
    assert isinstance(group, BaseExceptionGroup) and len(leaf_exceptions(group)) == 2
    assert root_cause(group) is config_error  # a p2pserve error is the meaningful one
    assert explain(config_error, api="127.0.0.1:5778") == ("f.yaml: bad", 2)
    store_error = StoreError("ledger store x: file is not a database")
    assert explain(store_error, api="127.0.0.1:5778") == (str(store_error), 1)
    transport_error = TransportError("cannot listen on /ip4/127.0.0.1/tcp/4001: Address already in use")
    assert root_cause(_nested_failure(transport_error)) is transport_error


def test_root_cause_leaves_bugs_alone() -> None:
    """A leaf of any other kind is a bug: no one-line explanation hides its traceback."""
    assert root_cause(_nested_failure(ConfigError("x"), RuntimeError("bug"))) is None
    assert root_cause(_nested_failure(KeyError("k"))) is None


# -- the address rules themselves ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "maddr"),
    [("127.0.0.1:1234", "/ip4/127.0.0.1/tcp/1234"), ("[::1]:4001", "/ip6/::1/tcp/4001"),
     ("node-1.example:4001", "/dns/node-1.example/tcp/4001"), ("/ip4/1.2.3.4/tcp/1", None), ("1234", None),
     ("host:99999", None)],
)
def test_as_multiaddr(text: str, maddr: str | None) -> None:
    assert as_multiaddr(text) == maddr


def test_address_rules_accept_what_the_transport_takes() -> None:
    for good in ("/ip4/0.0.0.0/tcp/4001", "/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/4001"):
        check_listen(good)
    for good in (f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}", f"/dns4/node.example/tcp/4001/p2p/{PEER}"):
        check_bootstrap(good)
    for bad, reason in (("/ip4/::1/tcp/1", "is not an IP4 address (use /ip6/)"), ("/ip4/1.2.3.4/tcp/70000", "not a TCP port"),
                        ("/ip4/1.2.3.4/tcp/1/ws", "is not /ip4/<ip>/tcp/<port>")):
        with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            check_listen(bad)
