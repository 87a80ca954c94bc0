"""``p2pserve simulate`` end to end: a small scenario through real nodes in virtual time;
outputs written; the same seed gives byte-identical summaries in two processes; churn
answers or fails every request clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pserve.errors import ConfigError
from p2pserve.sim.scenario import load_scenario, parse_scenario
from p2pserve.sim.simulate import build_result, run_scenario, write_outputs

ROOT = Path(__file__).resolve().parent.parent

SMALL = {
    "name": "tiny", "seed": 3, "model": "qwen3-8b", "drain_s": 300,
    "strategies": ["single", "decentralized"],
    "slo": {"thresholds": [5, 60, 5]},
    "nodes": [{"count": 3, "profile": "qwen3-8b/rtx3090"}],
    "workload": {"kind": "poisson", "duration": 40, "rates": [[0, [1.5, 0.05, 0.05]]],
                 "prompt": 200, "output": {"dist": "uniform", "low": 500, "high": 1500}, "max_tokens": 2048},
}


def test_a_small_scenario_writes_every_output(tmp_path: Path) -> None:
    scn = parse_scenario(SMALL)
    runs = run_scenario(scn, scn.strategies)
    result = write_outputs(scn, runs, tmp_path)
    for name in ("result.json", "slo.png", "latency.png", "running.png", "credit.png", "nodes/node0.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    n = len(scn.trace.requests)
    for s in ("single", "decentralized"):
        summary = result["summary"][s]
        assert summary["completed"] + summary["failed"] == n == len(result["records"][s])
        assert sum(c["executed"] for c in result["classes"][s].values()) == summary["completed"]
    single, dec = (result["summary"][s] for s in ("single", "decentralized"))
    assert dec["latency_p90"] < single["latency_p90"]  # the hot node's overflow goes to idle peers
    executed = {r["executor"] for r in result["records"]["decentralized"] if r["ok"]}
    assert executed == {0, 1, 2}


def test_same_seed_same_summary_in_two_processes(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(SMALL))  # JSON is YAML
    outs = []
    for i, hash_seed in enumerate(("1", "2")):
        out = tmp_path / f"out{i}"
        r = subprocess.run([sys.executable, "-m", "p2pserve", "simulate", str(path), "--out", str(out), "--no-plots"],
                           capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append((out / "result.json").read_bytes())
    assert outs[0] == outs[1]


def test_churn_every_request_is_answered_or_fails_clearly() -> None:
    raw = {**SMALL, "strategies": ["decentralized"], "nodes": [{"count": 4, "profile": "qwen3-8b/rtx3090"}],
           "workload": {**SMALL["workload"], "rates": [[0, [0.3, 0.1, 0.1, 0.1]]]},  # type: ignore[dict-item]
           "churn": [{"time": 10, "node": 2, "action": "leave"}, {"time": 25, "node": 2, "action": "join"}]}
    scn = parse_scenario(raw)
    runs = run_scenario(scn, scn.strategies)
    result = build_result(scn, runs)
    records = result["records"]["decentralized"]
    assert len(records) == len(scn.trace.requests)
    for r in records:
        assert r["ok"] or r["error"], r
    assert sum(r["ok"] for r in records) >= len(records) - sum(r["entry"] == 2 for r in records)
    late = [r for r in records if r["ok"] and r["executor"] == 2 and r["arrival"] > 25]
    assert late, "the rejoined node serves again"


def test_bad_scenarios_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.profile"):
        parse_scenario({**SMALL, "nodes": [{"count": 1, "profile": "qwen3-8b/nowhere"}]})
    with pytest.raises(ConfigError, match="strategies"):
        parse_scenario({**SMALL, "strategies": ["magic"]})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_scenario({**SMALL, "nodez": []})
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_scenario(bad)


def test_every_shipped_scenario_loads() -> None:
    for path in sorted((ROOT / "configs" / "sim").glob("*.yaml")):
        scn, _ = load_scenario(path)
        assert scn.trace.requests, path


def test_a_policy_sweep_runs_one_labelled_variant_per_value() -> None:
    raw = {**SMALL, "strategies": ["single"], "sweep": {"param": "offload_frequency", "values": [0, 1.0]}}
    scn = parse_scenario(raw)
    assert [label for label, _ in scn.sweep] == ["decentralized@offload_frequency=0", "decentralized@offload_frequency=1.0"]
    result = build_result(scn, run_scenario(scn, scn.strategies))
    assert set(result["summary"]) == set(result["records"]) == {"single", *(label for label, _ in scn.sweep)}
    never, always = (result["records"][label] for label, _ in scn.sweep)
    assert all(r["executor"] == r["entry"] for r in never if r["ok"])  # offload_frequency 0 keeps every request home
    assert any(r["executor"] != r["entry"] for r in always if r["ok"])
    with pytest.raises(ConfigError, match=r"sweep\.param"):
        parse_scenario({**SMALL, "sweep": {"param": "nonsense", "values": [1]}})
    with pytest.raises(ConfigError, match=r"sweep\.values"):
        parse_scenario({**SMALL, "sweep": {"param": "offload_frequency", "values": []}})
    with pytest.raises(ConfigError, match=r"sweep\.\w+: unknown key|unknown key"):
        parse_scenario({**SMALL, "sweep": {"param": "offload_frequency", "values": [1], "extra": 2}})


def test_plots_without_matplotlib_say_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib is the `sim` extra, not a dependency: without it `simulate` says so in one line."""
    import importlib.util

    from typer.testing import CliRunner

    from p2pserve.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(SMALL))
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "pip install 'p2pserve[sim]' (or pass --no-plots)" in result.output + (result.stderr if result.stderr_bytes else "")
