"""Config: defaults, the example file, and clear errors for unknown keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pserve.config import EMBEDDED_MODEL, NodeConfig, load_config, parse_config
from p2pserve.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    cfg = parse_config(None)
    assert cfg == NodeConfig()
    assert cfg.server_params.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert cfg.server_params.api == "127.0.0.1:5778"
    assert cfg.ledger_params.network_id == "devnet"
    assert cfg.server_params.peer_ttl == 3 * cfg.server_params.status_interval
    # no `models` key: the embedded model; `models: []`: a gateway
    assert [m.model_path for m in cfg.effective_models()] == [EMBEDDED_MODEL]
    assert parse_config({"models": []}).effective_models() == ()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    load_config(path)


def test_example_documents_every_field() -> None:
    import dataclasses

    from p2pserve import config as c

    text = (ROOT / "configs" / "node.example.yaml").read_text()
    for cls in (c.ServerParams, c.LedgerParams, c.GenParams, c.DispatchParams, c.ModelConfig):
        for f in dataclasses.fields(cls):
            assert f"{f.name}:" in text, f"{cls.__name__}.{f.name} is not documented in node.example.yaml"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"server_params": {"bogus": 1}}, r"f\.yaml: server_params\.bogus: unknown key"),
        ({"colour": "red"}, r"f\.yaml: colour: unknown key"),
        ({"server_params": {"offload_frequency": 1.5}}, r"server_params\.offload_frequency: must be between 0 and 1"),
        ({"server_params": {"status_interval": "fast"}}, r"server_params\.status_interval: expected a number"),
        ({"server_params": {"api": "nope"}}, r"server_params\.api: must be HOST:PORT"),
        ({"server_params": {"bootstrap": ["/ip4/1.2.3.4/tcp/1"]}}, r"/p2p/<peer id>"),
        ({"models": [{"base_url": "http://x"}]}, r"models\[0\]\.model_path: required key missing"),
        ({"models": [{"model_path": "m"}]}, r"models\[0\]\.base_url: required for backend: openai"),
        ({"models": [{"model_path": "m", "base_url": "http://x", "dispatch_params": {"target_token_usage": 2}}]},
         r"models\[0\]\.dispatch_params\.target_token_usage"),
        ({"models": [{"model_path": "m", "backend": "magic"}]}, r"models\[0\]\.backend"),
        ({"models": "m"}, r"models: expected a list"),
        ({"ledger_params": {"network_id": "a/b"}}, r"ledger_params\.network_id"),
        ({"server_params": {"peer_ttl": 1.0}}, r"peer_ttl: must be at least status_interval"),
        ([1, 2], r"<top level>: expected a mapping"),
    ],
)
def test_bad_configs_name_file_key_and_reason(raw: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(raw, "f.yaml")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_params: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_initial_credit_defaults_to_1000_on_devnet_and_0_elsewhere() -> None:
    """Free credit at open invites sybils: only the devnet gives it unless a config says so."""
    micro = 1_000_000
    devnet = parse_config(None).ledger_params
    assert devnet.initial_credit is None and devnet.effective_initial_credit() == 1000.0
    assert devnet.network_params().initial_credit == 1000 * micro
    public = parse_config({"ledger_params": {"network_id": "mainnet"}}).ledger_params
    assert public.effective_initial_credit() == 0.0 and public.network_params().initial_credit == 0
    # an explicit value wins on every network, 0 on devnet included
    def credit(ledger_params: dict[str, object]) -> int:
        return parse_config({"ledger_params": ledger_params}).ledger_params.network_params().initial_credit

    assert credit({"network_id": "mainnet", "initial_credit": 5}) == 5 * micro
    assert credit({"initial_credit": 0}) == 0
    assert credit({"initial_credit": None}) == 1000 * micro  # null in YAML: the network's default
    with pytest.raises(ConfigError, match=r"ledger_params\.initial_credit: must be >= 0"):
        parse_config({"ledger_params": {"initial_credit": -1}})
