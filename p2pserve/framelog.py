"""An append-only file of length-prefixed frames: the one storage shape of the node's small
logs (the unpaid receipts, the executor's replay log).

Each :meth:`FrameLog.append` is one ``write()`` of one uvarint-framed record to a file opened
``O_APPEND`` (mode 0600), without fsync: a process crash (SIGKILL) loses nothing, a power
loss may lose the last seconds. :meth:`FrameLog.read` tolerates a torn last frame and stops
at a corrupt length (nothing after it can be framed); callers skip records that do not
decode. :meth:`FrameLog.rewrite` replaces the file atomically (write a temporary, rename).
Every OS error becomes :class:`~p2pserve.errors.StoreError`. Not thread-safe.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from p2pserve.errors import MalformedMessage, StoreError
from p2pserve.wire.framing import FrameDecoder, encode_frame

__all__ = ["FrameLog"]


class FrameLog:
    """One log file of frames of at most ``max_frame`` bytes."""

    def __init__(self, path: Path | str, max_frame: int) -> None:
        self.path = Path(path)
        self.max_frame = max_frame
        self._fd: int | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def read(self) -> list[bytes]:
        """The frames in the file, in order (none if it does not exist)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        dec = FrameDecoder(self.max_frame)
        dec.feed(data)
        out: list[bytes] = []
        while True:
            try:
                frame = dec.next_frame()
            except MalformedMessage:  # a corrupt length: nothing after it can be framed
                break
            if frame is None:  # the end, or a torn last frame
                break
            out.append(frame)
        return out

    def open(self) -> None:
        """Open (creating) the file for appending."""
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def append(self, payload: bytes) -> None:
        """Add one frame (one ``write()``); nothing when the log is not open."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, encode_frame(payload, self.max_frame))
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from exc

    def rewrite(self, payloads: Iterable[bytes]) -> None:
        """Make the file hold exactly ``payloads`` (atomically) and open it for appending."""
        data = b"".join(encode_frame(p, self.max_frame) for p in payloads)
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise StoreError(f"cannot rewrite {self.path}: {exc}") from exc
        self.open()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
