"""Seeded randomness: every random choice in p2pserve draws from a stream derived from one
seed, so the same seed gives the same run.

:func:`derive` gives an independent ``random.Random`` for a purpose (a service, a request,
an offer), named by labels: streams with different labels do not interfere, so the order in
which concurrent requests draw does not change what each one draws. A production node
starts from :func:`fresh_seed` (the OS's entropy, once); tests and the simulator pass their
own. Pure: no I/O apart from ``fresh_seed``.
"""

from __future__ import annotations

import hashlib
import os
import random

__all__ = ["derive", "fresh_seed"]


def derive(seed: int | str | bytes, *labels: object) -> random.Random:
    """The stream of ``seed`` for ``labels`` (deterministic; independent per label tuple)."""
    h = hashlib.sha256(repr(seed).encode())
    for label in labels:
        h.update(b"\x00" + (label if isinstance(label, bytes) else str(label).encode()))
    return random.Random(int.from_bytes(h.digest(), "big"))


def fresh_seed() -> int:
    """A seed from the operating system's entropy (what a production node starts from)."""
    return int.from_bytes(os.urandom(16), "big")
