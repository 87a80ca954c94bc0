"""Duels between real nodes: four ``p2pserve join`` processes on 127.0.0.1 (real libp2p):
a gateway that duels every request, an executor whose fake backend answers correctly, one
whose fake backend answers noise, and a judge with the deterministic ``fake`` method. After
10 requests the correct executor has won every decided duel, stake weight moved, every
node's ledger audits clean and every node shows the same ratings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from p2pserve.testing.processes import read_banner, spawn_join, stop_processes, wait_for

pytestmark = [pytest.mark.libp2p, pytest.mark.processes]

MODEL = "fake-model"
COMMON = "  status_interval: 0.5\n  peer_ttl: 2.0\n  accept_frequency: 1.0\n"


def config(tmp: Path, name: str, server: str, models: str, staked: int = 10) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"server_params:\n{COMMON}{server}ledger_params:\n  initial_staked: {staked}\n{models}")
    return path


def fake(answers: str) -> str:
    return f"models:\n  - model_path: {MODEL}\n    backend: fake\n    fake: {{answers: {answers}}}\n"


def get(api: str, path: str) -> Any:
    return httpx.get(api + path, timeout=10).json()


def wait(pred: Any, timeout: float, what: str) -> None:
    wait_for(pred, timeout, what, poll=0.25)


def test_ten_duels_between_real_processes(tmp_path: Path) -> None:
    nodes = [
        ("gateway", config(tmp_path, "gw", "  duel_rate: 1.0\n", "models: []\n")),
        ("good", config(tmp_path, "good", "", fake("words"))),
        ("noisy", config(tmp_path, "noisy", "", fake("noise"))),
        ("judge", config(tmp_path, "judge", "  judge: true\n  judge_method: fake\n", "models: []\n")),
    ]
    procs: list[subprocess.Popen[str]] = []
    apis: dict[str, str] = {}
    ids: dict[str, str] = {}
    boot: list[str] = []
    try:
        for name, cfg in nodes:
            procs.append(spawn_join(["--config", str(cfg), "--data-dir", str(tmp_path / name), "--listen",
                                     "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", *boot], stderr=subprocess.DEVNULL))
            banner = read_banner(procs[-1])
            apis[name], ids[name] = banner["api"][0], banner["peer_id"][0]
            boot = boot or ["--bootstrap", banner["listening"][0]]
        gw = apis["gateway"]

        def ready() -> bool:
            st = get(gw, "/p2pserve/status")
            models = sum(MODEL in p["models"] for p in st["peers"])
            heads = get(gw, "/p2pserve/ledger/heads")["heads"]  # the judge's stake is known once its open is
            judge_staked = any(p["judge"] and p["stake"] > 0 for p in st["peers"])
            return models == 2 and judge_staked and st["ledger"]["writable"] and len(heads) == 4

        wait(ready, 60, "the gateway to see both executors and the judge")
        for i in range(10):
            r = httpx.post(gw + "/v1/chat/completions", timeout=60, json={
                "model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 16})
            assert r.status_code == 200, r.text
        try:
            wait(lambda: get(gw, "/p2pserve/status")["duels"]["settled"] == 10, 120, "ten judged duels")
        except AssertionError:
            print(json.dumps(get(gw, "/p2pserve/status")["duels"]))
            raise

        def agreed() -> bool:
            prints = {get(api, "/p2pserve/ledger")["fingerprint"] for api in apis.values()}
            return len(prints) == 1 and all(len(get(api, "/p2pserve/status")["ratings"]) == 2 for api in apis.values())

        wait(agreed, 60, "every node to hold the same ledger")
        ratings = [get(api, "/p2pserve/status")["ratings"] for api in apis.values()]
        assert all(r == ratings[0] for r in ratings)
        good, noisy = ratings[0][ids["good"]], ratings[0][ids["noisy"]]
        assert (good["wins"], good["losses"], good["ties"]) == (10, 0, 0)
        assert good["rating"] > 1000 > noisy["rating"]
        for name, api in apis.items():
            r = subprocess.run([sys.executable, "-m", "p2pserve", "audit", "--api", api, "--json"],
                               capture_output=True, text=True, timeout=120)
            report = json.loads(r.stdout)
            assert r.returncode == 0 and report["ok"], (name, report["problems"])
            assert report["verdicts"] == 10 and report["ratings"] == ratings[0]
            weights = {b["account"]: b["stake_weight"] for b in report["balances"]}
            assert weights[ids["good"]] > weights[ids["noisy"]]
    finally:
        stop_processes(procs)
