"""Simulated-server profiles: one YAML file per (model, GPU) into a :class:`Profile`.

A profile file's keys are exactly :class:`~p2pserve.sim.batching.Profile`'s fields (times in
seconds); unknown keys, missing keys and wrongly typed values are refused with a
:class:`~p2pserve.errors.ConfigError` naming the file and the key. The shipped profiles live
in ``configs/sim/profiles/`` of the source tree (:data:`PROFILE_DIR`), named
``<model>_<gpu>.yaml``, and each number there carries a comment saying where it comes from.

Pure apart from reading the one file asked for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from p2pserve.errors import ConfigError
from p2pserve.sim.batching import Profile

__all__ = ["PROFILE_DIR", "load_profile", "parse_profile", "profile_names"]

PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "sim" / "profiles"
"""The profiles shipped with the source tree (``configs/`` is not installed with the package)."""

_FIELDS = {f.name: f for f in dataclasses.fields(Profile)}
_REQUIRED = frozenset(name for name, f in _FIELDS.items() if f.default is dataclasses.MISSING)
_INTS = frozenset({"weight_bytes", "kv_bytes_per_token", "kv_capacity_tokens", "max_batch", "chunk_tokens", "block_tokens",
                   "context_length"})
_STRS = frozenset({"model", "gpu"})


def profile_names(directory: Path | None = None) -> list[str]:
    """``model/gpu`` of every profile in ``directory`` (default :data:`PROFILE_DIR`), sorted."""
    root = directory or PROFILE_DIR
    return sorted(p.stem.replace("_", "/", 1) for p in root.glob("*.yaml"))


def load_profile(ref: str | Path, *, directory: Path | None = None) -> Profile:
    """The profile ``ref``: a path to a YAML file, or a name ``model/gpu`` (``qwen3-8b/h100-80gb``)
    looked up as ``<model>_<gpu>.yaml`` in ``directory`` (default :data:`PROFILE_DIR`).

    Raises ConfigError for a missing file (listing the known names) or an invalid one.
    """
    path = _resolve(ref, directory or PROFILE_DIR)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the profile: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_profile(raw, source=str(path))


def _resolve(ref: str | Path, directory: Path) -> Path:
    if isinstance(ref, Path) or ref.endswith((".yaml", ".yml")):
        return Path(ref)
    model, sep, gpu = ref.partition("/")
    path = directory / f"{model}_{gpu}.yaml"
    if not sep or not model or not gpu or "/" in gpu:
        raise ConfigError(f"profile {ref!r}: expected a YAML path or a name 'model/gpu'")
    if not path.is_file():
        known = ", ".join(profile_names(directory)) or "none"
        raise ConfigError(f"profile {ref!r}: no {path.name} in {directory} (known: {known})")
    return path


def parse_profile(raw: Any, *, source: str = "profile") -> Profile:
    """A :class:`Profile` from a parsed YAML mapping (``source`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a profile is a mapping of keys to values")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    missing = sorted(_REQUIRED - raw.keys())
    if missing:
        raise ConfigError(f"{source}: missing key {missing[0]!r}")
    for key, value in raw.items():
        _check_type(source, key, value)
    try:
        return Profile(**raw)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _check_type(source: str, key: str, value: object) -> None:
    if key in _STRS:
        ok, want = isinstance(value, str) and bool(value), "a non-empty string"
    elif key in _INTS:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        # YAML 1.1 reads 1e-3 (no dot) as a string: say so rather than "wrong type"
        ok, want = isinstance(value, int | float) and not isinstance(value, bool), "a number (write 1.0e-3, not 1e-3)"
    if not ok:
        raise ConfigError(f"{source}: {key}: must be {want} (got {value!r})")
