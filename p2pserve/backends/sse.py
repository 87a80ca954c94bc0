"""A sans-IO decoder of Server-Sent Events: bytes in, the ``data`` payloads of complete events out.

OpenAI-compatible servers stream answers as SSE (``data: {chunk}`` events ending with
``data: [DONE]``). :class:`SSEDecoder` is independent of how the bytes are split into
chunks, bounds what one event may buffer (:data:`MAX_SSE_EVENT_BYTES`), and raises
:class:`~p2pserve.errors.BackendResponseError` for anything an OpenAI-compatible server
does not send.
"""

from __future__ import annotations

import codecs

from p2pserve.errors import BackendResponseError

__all__ = ["MAX_SSE_EVENT_BYTES", "SSEDecoder"]

MAX_SSE_EVENT_BYTES = 4 * 1024 * 1024
"""Limit on one SSE event (a line, or the data lines of one event) from a backend."""

_SSE_FIELDS = frozenset({"event", "id", "retry"})


class SSEDecoder:
    """Sans-IO decoder of an SSE byte stream into the ``data`` payloads of its events.

    ``feed(bytes)`` returns the payloads of the events completed by those bytes, in order.
    Lines end with LF, CRLF or CR; UTF-8 may be split anywhere. ``data:`` lines of one event
    are joined with ``\\n``; comments (``:``) and ``event``/``id``/``retry`` fields are
    ignored. Any other line is malformed: OpenAI-compatible servers send nothing else.
    Raises :class:`BackendResponseError` for malformed input or an event above
    :data:`MAX_SSE_EVENT_BYTES`.
    """

    def __init__(self, max_event_bytes: int = MAX_SSE_EVENT_BYTES) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._data: list[str] = []
        self._size = 0
        self._max = max_event_bytes
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[str]:
        try:
            text = self._utf8.decode(chunk)
        except UnicodeDecodeError as exc:
            raise BackendResponseError("backend sent invalid UTF-8 in its event stream") from exc
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        self._buf += text
        out: list[str] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                break
            line, sep_len = self._buf[:cut], 1
            if self._buf[cut] == "\r":
                if cut + 1 < len(self._buf):
                    sep_len = 2 if self._buf[cut + 1] == "\n" else 1
                else:
                    self._pending_cr = True
            self._buf = self._buf[cut + sep_len :]
            payload = self._line(line)
            if payload is not None:
                out.append(payload)
        if len(self._buf) > self._max:
            raise BackendResponseError("backend sent an over-long event stream line")
        return out

    def _line(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            payload, self._data, self._size = "\n".join(self._data), [], 0
            return payload
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if not colon and name not in _SSE_FIELDS and name != "data":
            raise BackendResponseError(f"backend sent a malformed event stream line: {line[:80]!r}")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value)
            if self._size > self._max:
                raise BackendResponseError("backend sent an over-long event")
            self._data.append(value)
        elif name not in _SSE_FIELDS:
            raise BackendResponseError(f"backend sent a malformed event stream line: {line[:80]!r}")
        return None

    def close(self) -> list[str]:
        """End of stream: the payload of a last event not followed by a blank line, if any."""
        rest = self.feed(b"\n") if self._buf else []
        if self._data:
            rest += self.feed(b"\n")
        return rest


def _line_end(buf: str) -> int | None:
    cr, lf = buf.find("\r"), buf.find("\n")
    ends = [i for i in (cr, lf) if i >= 0]
    return min(ends) if ends else None
