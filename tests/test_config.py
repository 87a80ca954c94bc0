"""Config: defaults, the example file, and clear errors for unknown keys and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pserve.backends.embedded import MODEL_NAME
from p2pserve.backends.registry import BackendSpec
from p2pserve.config import (
    EMBEDDED_MODEL,
    LedgerParams,
    NodeConfig,
    ServerParams,
    flat_section,
    load_config,
    override,
    parse_config,
    yaml_key_table,
    yaml_keys,
)
from p2pserve.errors import ConfigError
from p2pserve.policies import DispatchParams, PolicyParams
from p2pserve.wire.limits import Limits

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
    from p2pserve import config as c

    text = (ROOT / "configs" / "node.example.yaml").read_text()
    for cls in (c.ServerParams, c.LedgerParams, c.GenParams, c.DispatchParams, c.BackendSpec, c.Limits):
        keys = c.yaml_keys(cls)
        assert keys
        for key in keys:
            assert f"{key}:" in text, f"{cls.__name__} key {key} is not documented in node.example.yaml"
    # the example is the defaults, spelt out
    example = load_config(ROOT / "configs" / "node.example.yaml")
    assert example.server_params == NodeConfig().server_params
    assert example.ledger_params == NodeConfig().ledger_params and example.limits == Limits()


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
        ({"server_params": {"max_wait_s": -1}}, r"f\.yaml: server_params\.max_wait_s: must be >= 0 \(got -1\.0\)"),
        ({"server_params": {"offer_fanout": 1.5}}, r"server_params\.offer_fanout: expected an integer"),
        ({"models": [{"model_path": "m", "base_url": "http://x", "timeout": 0}]}, r"models\[0\]\.timeout: must be > 0"),
        ({"models": [{"model_path": "m", "base_url": "ftp://x"}]}, r"models\[0\]\.base_url: must start with http://"),
        ({"models": [{"model_path": "m", "base_url": "http://x", "gen_params": {"max_tokens": 0}}]},
         r"models\[0\]\.gen_params\.max_tokens: must be > 0"),
        ({"models": [{"model_path": "m", "backend": "fake", "gen_params": {"temperature": -0.5}}]},
         r"models\[0\]\.gen_params\.temperature: must be >= 0 \(got -0\.5\)"),
        ({"models": [{"model_path": "m", "backend": "fake", "gen_params": {"top_p": 0}}]},
         r"models\[0\]\.gen_params\.top_p: must be within \(0, 1\] \(got 0\.0\)"),
        ({"models": [{"model_path": "m", "base_url": "http://x", "gen_params": {"top_k": 5}}]},
         r"models\[0\]\.gen_params\.top_k: unknown key"),
        ({"models": [{"model_path": "m", "base_url": "http://x", "metrics": "sometimes"}]},
         r"models\[0\]\.metrics: must be one of auto, off"),
        ({"models": [{"model_path": "m", "backend": "fake"}, {"model_path": "m", "backend": "fake"}]},
         r"f\.yaml: models: model_path listed twice: m"),
        ({"ledger_params": {"unbonding_delay_s": 60, "max_clock_skew_s": 60}}, r"f\.yaml: ledger_params: not a sound network genesis"),
        ({"limits": {"max_frame": 0}}, r"f\.yaml: limits\.max_frame: must be at least 1"),
        ({"limits": {"max_frame": 1 << 20, "max_prompt": 600_000}}, r"limits\.max_prompt: must be below max_frame / 2"),
        ({"limits": {"max_frame": 32768, "max_prompt": 1000, "max_text_chunk": 65536}}, r"limits\.max_text_chunk: must be below max_frame"),
        ({"limits": {"max_prompt": 3 * 1024 * 1024}}, r"limits\.max_prompt: may not exceed the protocol's cap of 1048576"),
        ({"limits": {"max_pubsub_message": 1024}}, r"limits\.max_pubsub_message: must be above"),
        ({"limits": {"max_window": 3}}, r"limits\.max_window: unknown key"),
        ({"limits": {"max_buffered_per_peer": 4 * 1024 * 1024}},
         r"f\.yaml: limits\.max_buffered_per_peer: must be at least max_frame \+ 65546 = 4259850 \(a stream receiving "
         r"one largest frame holds it, its length prefix and the rest of one read\) \(got 4194304\)"),
        ({"limits": {"max_streams_per_peer": 100, "max_streams": 50}},
         r"f\.yaml: limits\.max_streams: must be at least max_streams_per_peer \(100\): it bounds all peers together \(got 50\)"),
        ({"limits": {"max_buffered_per_peer": 8 << 20, "max_buffered": 6 << 20}},
         r"limits\.max_buffered: must be at least max_buffered_per_peer \(8388608\)"),
        ({"limits": {"max_streams": 9000}}, r"limits\.max_streams: may not exceed its default of 8192 \(got 9000\)"),
        ({"limits": {"max_buffered": 1 << 30}}, r"limits\.max_buffered: may not exceed its default of 268435456"),
        ({"limits": {"max_streams_per_peer": 0}}, r"limits\.max_streams_per_peer: must be at least 1"),
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


def test_one_model_type_maps_the_yaml_names() -> None:
    """A models[] entry loads as the BackendSpec the node builds its backend from; the YAML
    names that differ (backend, backend_model, timeout, gen_params, dispatch_params) map onto it."""
    cfg = parse_config({"models": [{
        "model_path": "m", "backend": "openai", "base_url": "http://x", "backend_model": "org/M", "timeout": 5,
        "gen_params": {"max_tokens": 9, "temperature": None}, "dispatch_params": {"max_concurrency": 8, "target_token_usage": -1},
        "price_per_1k": 2.5, "metrics": "off", "api_key": "k",
    }]})
    (spec,) = cfg.effective_models()
    assert spec == BackendSpec(
        "m", kind="openai", base_url="http://x", served_model="org/M", first_byte_timeout=5.0, read_timeout=5.0,
        gen_params={"max_tokens": 9}, dispatch_params=DispatchParams(target_token_usage=-1, max_concurrency=8),
        max_concurrency=8, price_per_1k=2.5, metrics="off", api_key="k", context_length=8192,
    )
    # the defaults of an entry are what a node served before the two schemas were merged
    (plain,) = parse_config({"models": [{"model_path": "m", "backend": "fake"}]}).effective_models()
    assert (plain.context_length, plain.first_byte_timeout, plain.read_timeout, plain.max_concurrency) == (8192, 120.0, 120.0, 1)
    assert plain.price_per_1k == 1.0 and plain.gen_params == {} and plain.dispatch_params == DispatchParams()
    # no `models` key: the embedded model, named once (by the embedded backend)
    (default,) = NodeConfig().effective_models()
    assert EMBEDDED_MODEL == MODEL_NAME == default.model_path
    assert (default.kind, default.context_length, default.first_byte_timeout) == ("embedded", 2048, 120.0)


def test_policy_knobs_sit_flat_in_server_params() -> None:
    sp = parse_config({"server_params": {"offload_frequency": 0.5, "offer_fanout": 2, "max_wait_s": 3}}).server_params
    assert sp.policy_params == PolicyParams(offload_frequency=0.5, offer_fanout=2, max_wait_s=3.0)
    assert parse_config(None).server_params.policy_params == PolicyParams()
    with pytest.raises(ConfigError, match=r"f\.yaml: server_params\.policy_params: unknown key"):
        parse_config({"server_params": {"policy_params": {}}}, "f.yaml")


def test_the_key_table_is_the_loaders() -> None:
    """yaml_key_table and flat_section are what the loader (and the generated reference) read."""
    assert flat_section(ServerParams) == ("policy_params", PolicyParams) and flat_section(LedgerParams) is None
    assert (*yaml_key_table(ServerParams), *yaml_key_table(PolicyParams)) == yaml_keys(ServerParams)
    timeout = yaml_key_table(BackendSpec)["timeout"]
    assert (timeout.tp, timeout.fields) == (float, ("first_byte_timeout", "read_timeout"))
    assert "kind" not in yaml_key_table(BackendSpec) and "backend" in yaml_key_table(BackendSpec)


def test_limits_section() -> None:
    assert parse_config(None).limits == Limits()
    limits = parse_config({"limits": {"max_prompt": 1000, "max_blocks_per_batch": 16}}).limits
    assert limits == Limits(max_prompt=1000, max_blocks_per_batch=16)
    # the stream caps tighten alone, and the floor on max_buffered_per_peer follows max_frame
    caps = parse_config({"limits": {"max_streams_per_peer": 8, "max_streams": 8, "max_buffered": 64 << 20}}).limits
    assert (caps.max_streams_per_peer, caps.max_streams, caps.max_buffered_per_peer, caps.max_buffered) == (8, 8, 64 << 20, 64 << 20)
    small = parse_config({"limits": {"max_frame": 1 << 16, "max_prompt": 1000, "max_text_chunk": 1000,
                                     "max_buffered_per_peer": (1 << 16) + 65546, "max_buffered": (1 << 16) + 65546}}).limits
    assert small.max_buffered_per_peer == small.max_buffered == 131082


def test_overrides_are_checked_like_the_file() -> None:
    base = parse_config({"server_params": {"status_interval": 1.0, "peer_ttl": 3.0, "offer_fanout": 2}})
    cfg = override(base, {"server_params": {"bootstrap": ["/ip4/1.2.3.4/tcp/1/p2p/QmX"]}, "data_dir": "/tmp/x"})
    assert cfg.server_params.bootstrap == ("/ip4/1.2.3.4/tcp/1/p2p/QmX",) and cfg.data_dir == "/tmp/x"
    # everything not overridden keeps the file's value
    assert cfg.server_params.status_interval == 1.0 and cfg.server_params.policy_params.offer_fanout == 2
    assert cfg.ledger_params == base.ledger_params and cfg.models == base.models
    assert override(base, {}) == base
    with pytest.raises(ConfigError, match=r"command line: server_params\.bootstrap: each address must end in /p2p/<peer id>"):
        override(base, {"server_params": {"bootstrap": ["127.0.0.1:35005"]}})
    with pytest.raises(ConfigError, match=r"command line: server_params\.peer_ttl: must be at least status_interval"):
        override(base, {"server_params": {"status_interval": 5.0}})
    with pytest.raises(ConfigError, match=r"command line: server_params\.api: must be HOST:PORT"):
        override(base, {"server_params": {"api": "nope"}})


def test_join_checks_command_line_options_like_the_file(tmp_path: Path) -> None:
    """`p2pserve join --bootstrap 127.0.0.1:35005` (no /p2p/<id>) is refused, as it is in a file."""
    from typer.testing import CliRunner

    from p2pserve.cli import app

    result = CliRunner().invoke(app, ["join", "--bootstrap", "127.0.0.1:35005", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "command line: server_params.bootstrap: each address must end in /p2p/<peer id>" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []  # refused before any key was made
