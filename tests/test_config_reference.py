"""docs/config.md is generated from the config types (``python -m p2pserve.configref``) and stays so:
it fails here when stale, it covers every section the loader reads, and the defaults it shows
are the ones the loader applies."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pserve import config, configref
from p2pserve.policies import PolicyParams

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "config.md"
FIX = "regenerate it: .venv/bin/python -m p2pserve.configref --write docs/config.md"


def test_docs_config_md_is_the_generated_reference() -> None:
    assert REFERENCE.read_text() == configref.render(), f"docs/config.md is out of date with the config types; {FIX}"


def _dataclasses_in(tp: Any) -> set[type]:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return {tp}
    return {c for arg in typing.get_args(tp) for c in _dataclasses_in(arg)}


def test_every_section_the_loader_reads_has_a_table() -> None:
    seen: set[type] = set()
    todo: list[type] = [config.NodeConfig]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo += [c for key in config.yaml_key_table(cls).values() for c in _dataclasses_in(key.tp) if c not in seen]
    assert seen == {s.cls for s in configref.sections()}
    documented = {e.key for s in configref.sections() for e in configref.entries(s)}
    assert set(config.yaml_keys(config.ServerParams)) | set(config.yaml_keys(config.LedgerParams)) <= documented
    assert set(config.yaml_keys(PolicyParams)) <= documented


def _shown_defaults(path: str) -> dict[str, Any]:
    section = next(s for s in configref.sections() if s.path == path)
    return {e.key: json.loads(e.default.strip("`")) for e in configref.entries(section) if e.default.startswith("`")}


def test_the_defaults_shown_are_the_loaders() -> None:
    raw = {path: _shown_defaults(path) for path in ("server_params", "ledger_params", "limits")}
    assert config.parse_config(raw) == config.NodeConfig()
    entry = _shown_defaults("models[]")
    loaded = config.parse_config({"models": [{**entry, "model_path": "m", "base_url": "http://127.0.0.1:1"}]}).models
    assert loaded == config.parse_config({"models": [{"model_path": "m", "base_url": "http://127.0.0.1:1"}]}).models


def test_attribute_docstrings_are_read_from_the_source() -> None:
    @dataclass
    class Sample:
        documented: int = 1
        """What it is."""
        bare: int = 2

    assert configref.field_docs(Sample) == {"documented": "What it is."}


def test_check_names_the_stale_file_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "config.md"
    stale.write_text("# old\n")
    assert configref.main(["--check", str(stale)]) == 1
    assert f"error: {stale} is out of date; regenerate it with: python -m p2pserve.configref --write {stale}" in capsys.readouterr().err
    assert configref.main(["--write", str(stale)]) == 0
    assert configref.main(["--check", str(stale)]) == 0
    assert configref.main(["--check", str(tmp_path / "absent.md")]) == 1
