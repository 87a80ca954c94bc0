"""Exported names (as httpx's tests/test_exported_members.py): every public module's
``__all__`` is sorted and names only what the module has; the top-level package exports
exactly its public members; the package ships ``py.typed``.

"Sorted" is ruff's RUF022 order (isort style), the order most modules here already use:
SCREAMING_SNAKE_CASE constants first, then CamelCase names, then the rest, each group in
natural order ("item2" before "item10").
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import p2pserve
import transports

ROOT = Path(__file__).resolve().parent.parent

def _public_modules() -> list[str]:
    """Every module of p2pserve and transports with no ``_private`` part, but ``__main__``s."""
    names = []
    for package in (p2pserve, transports):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return sorted(names)


def _with_all() -> list[str]:
    return [m for m in _public_modules() if hasattr(importlib.import_module(m), "__all__")]


def ruf022_key(name: str) -> tuple[int, list[str | int]]:
    """ruff's RUF022 sort key: constants, then classes (CamelCase), then the rest; natural order."""
    if len(name) > 1 and name.upper() == name and name.lower() != name:
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def test_ruf022_key() -> None:
    names = ["load", "MAX_BODY", "Block", "item10", "HASH_SIZE", "item2", "A", "Kind"]
    assert sorted(names, key=ruf022_key) == ["HASH_SIZE", "MAX_BODY", "A", "Block", "Kind", "item2", "item10", "load"]


@pytest.mark.parametrize("module", _with_all())
def test_all_is_sorted(module: str) -> None:
    exported = list(importlib.import_module(module).__all__)
    assert exported == sorted(exported, key=ruf022_key)


@pytest.mark.parametrize("module", _with_all())
def test_all_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__), "a name is listed twice"
    assert [name for name in mod.__all__ if not hasattr(mod, name)] == []


def test_top_level_exports_exactly_its_entry_points_lazily() -> None:
    """The top-level package lists its entry points in ``__all__`` and every one resolves;
    none is imported until used, so pure modules stay free of trio, libp2p and sqlite3."""
    public = sorted(
        name for name, value in vars(p2pserve).items() if not name.startswith("_") and not isinstance(value, ModuleType)
    )
    assert public == []  # nothing eager
    for name in p2pserve.__all__:
        assert getattr(p2pserve, name) is getattr(importlib.import_module(p2pserve._HOMES[name]), name)
    assert set(p2pserve.__all__) <= set(dir(p2pserve))
    with pytest.raises(AttributeError):
        p2pserve.nothing_here  # noqa: B018
    assert isinstance(p2pserve.__version__, str)


def test_package_is_marked_typed() -> None:
    """PEP 561: type checkers use the inline types only if the packages ship ``py.typed``
    (listed as package data in pyproject.toml: setuptools 68 leaves it out otherwise)."""
    assert (ROOT / "p2pserve" / "py.typed").is_file() and (ROOT / "transports" / "py.typed").is_file()
    assert 'p2pserve = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
