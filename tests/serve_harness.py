"""Test helpers for the serving path: signed statuses, peer entries, and a scripted backend.

``ScriptedBackend`` plays a script of steps (text deltas, sleeps, errors, a hang) under
trio's clock, so failover cases run in virtual time with ``autojump_clock``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, TextDelta
from p2pserve.crypto import Signer
from p2pserve.errors import BackendUnavailable
from p2pserve.peers import PeerEntry
from p2pserve.wire.messages import ModelStatus, Status

__all__ = [
    "Fail",
    "Hang",
    "ScriptedBackend",
    "Sleep",
    "make_entry",
    "make_status",
    "signer",
]

NETWORK = "testnet"


def signer(i: int) -> Signer:
    """A deterministic key for test node ``i``."""
    return Signer(bytes([i % 256]) * 31 + bytes([(i // 256) % 256]))


def make_status(
    s: Signer,
    models: Sequence[str | ModelStatus] = ("m",),
    *,
    stake: int = 1_000_000,
    seq: int = 1,
    accepting: bool = True,
    network_id: str = NETWORK,
    price_per_1k: int = 1000,
) -> Status:
    """A signed status for ``s`` serving ``models`` (names become accepting idle models)."""
    ms = tuple(
        m if isinstance(m, ModelStatus) else ModelStatus(m, 4096, price_per_1k, 0, 0, 0.0, True) for m in models
    )
    return Status(network_id, s.peer_id, seq, 0, (), ms, accepting, 0, 0, stake, b"", b"").signed(s)


def make_entry(s: Signer, stake: int, *, models: Sequence[str] = ("m",)) -> PeerEntry:
    return PeerEntry(make_status(s, models, stake=stake), 0.0)


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Fail:
    message: str = "backend exploded"


@dataclass(frozen=True)
class Hang:
    """Never produce anything again (until cancelled)."""


Step = str | Sleep | Fail | Hang


@dataclass
class ScriptedBackend(Backend):
    """A backend that plays ``script``: strings are deltas, then a Finished (``finish_reason``).

    ``load_value`` is what :meth:`load` reports; when ``None`` it reports an in-flight load
    from its own count of running generations. ``calls`` records (kind, body, continuation).
    """

    model: str = "m"
    script: Sequence[Step] = ("Hello", " world")
    finish_reason: str = "stop"
    load_value: Load | None = None
    max_concurrency: int = 4
    supports_continuation: bool = False
    calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    running: int = 0

    async def generate(
        self, kind: Kind, body: dict[str, Any], *, continuation: str = ""
    ) -> AsyncIterator[GenerationEvent]:
        self.calls.append((kind, body, continuation))
        self.running += 1
        try:
            n = 0
            for step in self.script:
                if isinstance(step, str):
                    n += 1
                    yield TextDelta(step)
                    await trio.sleep(0)
                elif isinstance(step, Sleep):
                    await trio.sleep(step.seconds)
                elif isinstance(step, Fail):
                    raise BackendUnavailable(step.message)
                else:
                    await trio.sleep(math.inf)
            yield Finished(self.finish_reason, prompt_tokens=3, completion_tokens=n)
        finally:
            self.running -= 1

    async def load(self) -> Load:
        if self.load_value is not None:
            return self.load_value
        return Load(running=self.running, queued=0, source="inflight")
