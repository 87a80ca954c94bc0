"""docs/providers.md stays true: its YAML blocks and configs/providers/*.yaml load, the files it
names exist, and the systemd unit in examples/ runs `p2pserve join` with options and
variables that command has."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from p2pserve.cli import app
from p2pserve.config import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "providers.md").read_text()
UNIT = ROOT / "examples" / "p2pserve.service"


def _yaml_blocks() -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(r"^ *```yaml\n(.*?)^ *```", GUIDE, flags=re.S | re.M)]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "providers").glob("*.yaml")), ids=lambda p: p.name)
def test_provider_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.models is not None  # each says what it serves (a bootstrap: nothing)
    assert all(m.kind == "openai" and m.base_url and m.base_url.startswith("http://127.0.0.1:") for m in config.models)


@pytest.mark.parametrize("block", _yaml_blocks(), ids=lambda b: b.splitlines()[-1].strip()[:40])
def test_every_yaml_block_of_the_guide_is_a_valid_config(block: str) -> None:
    parse_config(yaml.safe_load(block), "docs/providers.md")


def test_the_guide_has_its_blocks_and_names_files_that_exist() -> None:
    assert len(_yaml_blocks()) >= 6
    for name in set(re.findall(r"`((?:configs|examples|docs|tests)/[\w./-]+\.(?:yaml|service|md|py))`", GUIDE)):
        assert (ROOT / name).is_file(), name


def _unit() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            key, _, value = line.partition("=")
            sections[current].append((key, value))
    return sections


def test_the_systemd_unit_runs_join_with_options_it_has() -> None:
    unit = _unit()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = dict(unit["Service"])
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["KillSignal"] == "SIGTERM" and service["StateDirectory"] == "p2pserve"
    command = service["ExecStart"].split()
    assert command[0].endswith("/bin/p2pserve") and command[1] == "join"
    help_text = CliRunner().invoke(app, ["join", "--help"], env={"COLUMNS": "200"}).output
    for option in (a for a in command[2:] if a.startswith("--")):
        assert option in help_text, option
    env = [v.split("=", 1)[0] for k, v in unit["Service"] if k == "Environment"]
    assert env == ["P2PSERVE_HOME", "P2PSERVE_CONFIG"]
    assert all(f"env var: {name}" in help_text for name in env)
