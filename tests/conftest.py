"""Shared, transport-agnostic test fixtures. Keep this file small and generic:
fixtures specific to one module belong in that module."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from p2pserve.crypto import Signer


def signer_for(name: str | int) -> Signer:
    """A deterministic Signer for a test participant (same name, same key, every run)."""
    return Signer(hashlib.sha256(f"p2pserve-test-key/{name}".encode()).digest())


@pytest.fixture
def make_signer() -> Callable[[str | int], Signer]:
    """``make_signer(name)``: a deterministic Signer per name."""
    return signer_for
