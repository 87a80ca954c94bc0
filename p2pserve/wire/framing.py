"""Unsigned-varint length-prefixed framing, sans-IO (feed bytes in, take frames out).

A frame is ``uvarint(len(payload)) || payload``. The decoder refuses a length above
``max_frame`` *before* buffering the payload, and a varint longer than 10 bytes, so a peer
cannot make us hold more than ``max_frame`` + 10 bytes.
"""

from __future__ import annotations

from p2pserve.errors import FrameTooLarge, LocalProtocolError, MalformedMessage
from p2pserve.wire.limits import DEFAULT_LIMITS

__all__ = ["MAX_VARINT_LEN", "FrameDecoder", "decode_uvarint", "encode_frame", "encode_uvarint"]

MAX_VARINT_LEN = 10


def encode_uvarint(n: int) -> bytes:
    """The unsigned LEB128 encoding of ``n`` (n >= 0)."""
    if n < 0:
        raise LocalProtocolError("uvarint must be non-negative")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def decode_uvarint(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int] | None:
    """Decode a uvarint at ``pos``: ``(value, end)`` or None if ``buf`` ends inside it.

    Raises MalformedMessage for a varint longer than 10 bytes or not minimally encoded.
    """
    n = shift = 0
    for i in range(pos, min(len(buf), pos + MAX_VARINT_LEN)):
        b = buf[i]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if b == 0 and i > pos:
                raise MalformedMessage("non-minimal varint")
            return n, i + 1
    if len(buf) - pos >= MAX_VARINT_LEN:
        raise MalformedMessage("varint longer than 10 bytes")
    return None


def encode_frame(payload: bytes, max_frame: int = DEFAULT_LIMITS.max_frame) -> bytes:
    """One frame; raises LocalProtocolError if ``payload`` exceeds ``max_frame``."""
    if len(payload) > max_frame:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds the {max_frame}-byte limit")
    return encode_uvarint(len(payload)) + payload


class FrameDecoder:
    """Incremental frame decoder. ``feed()`` bytes, then ``next_frame()`` until it returns None.

    After any error the decoder is poisoned: the stream must be closed.
    """

    __slots__ = ("_buf", "_broken", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_LIMITS.max_frame) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None if more bytes are needed."""
        if self._broken:
            raise MalformedMessage("frame decoder already failed")
        try:
            head = decode_uvarint(self._buf)
        except MalformedMessage:
            self._broken = True
            raise
        if head is None:
            return None
        length, start = head
        if length > self.max_frame:
            self._broken = True
            raise FrameTooLarge(f"frame of {length} bytes exceeds the {self.max_frame}-byte limit")
        end = start + length
        if len(self._buf) < end:
            return None
        frame = bytes(self._buf[start:end])
        del self._buf[:end]
        return frame
