"""The executor's replay log: offers it has taken, kept on disk so that a restart does not
forget them (``<data-dir>/replay.log``).

An offer is fresh only once (:class:`~p2pserve.serving.receipts.ReplayGuard`), but the guard lives
in memory: without this file, an offer replayed to an executor that restarted within the
replay window would be executed again, for free to whoever replays it. Each accepted
offer is one uvarint-length-prefixed frame ``msgpack([requester, request_id, created_ms])``
written with one ``write()`` (no fsync: a power loss can forget the last seconds, a process
crash cannot). On open, the entries still inside the window are loaded and the file is
rewritten to hold only them; it is rewritten again whenever it grows past
``compact_every`` entries.

Not thread-safe; one log per node, used from one trio task at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgpack

from p2pserve.framelog import FrameLog

__all__ = ["REPLAY_NAME", "ReplayLog"]

REPLAY_NAME = "replay.log"
_MAX_ENTRY = 1024

Entry = tuple[str, bytes, int]


class ReplayLog:
    """Offers taken, on disk (see the module docstring)."""

    def __init__(self, path: Path | str, *, compact_every: int = 200_000) -> None:
        self.log = FrameLog(path, _MAX_ENTRY)
        self.path = self.log.path
        self.compact_every = compact_every
        self._written = 0

    def open(self, now_ms: int, window_ms: int) -> list[Entry]:
        """Load the entries created within ``window_ms`` of ``now_ms``, keep only those in the
        file, and open it for appending. Raises StoreError."""
        entries = [e for e in self._load() if abs(now_ms - e[2]) <= window_ms]
        self._rewrite(entries)
        return entries

    def append(self, requester: str, request_id: bytes, created_ms: int) -> None:
        """Record one offer taken (one ``write()``). Raises StoreError."""
        if not self.log.is_open:
            return
        self.log.append(_pack((requester, request_id, created_ms)))
        self._written += 1

    def needs_compaction(self) -> bool:
        return self._written >= self.compact_every

    def compact(self, entries: Iterable[Entry]) -> None:
        """Make the file hold exactly ``entries`` (the guard's live ones). Raises StoreError."""
        self._rewrite(list(entries))

    def close(self) -> None:
        """Close the file (idempotent)."""
        self.log.close()

    def _load(self) -> list[Entry]:
        out: list[Entry] = []
        for frame in self.log.read():
            try:
                r, i, c = msgpack.unpackb(frame, raw=False)
            except Exception:  # a torn or foreign frame: skip it, the rest is still good
                continue
            if isinstance(r, str) and isinstance(i, bytes) and type(c) is int:
                out.append((r, i, c))
        return out

    def _rewrite(self, entries: list[Entry]) -> None:
        self.log.rewrite(_pack(e) for e in entries)
        self._written = len(entries)


def _pack(entry: Entry) -> bytes:
    return msgpack.packb(list(entry), use_bin_type=True)  # type: ignore[no-any-return]
