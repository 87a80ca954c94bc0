"""The node's event log: one line per event that matters, on top of stdlib logging.

An event is a name and key=value fields (:func:`event`): ``joined``, ``peer_seen``,
``request_offloaded``, ``payment_sent``, ... (docs/operations.md, "Logs", lists them all).
It is an ordinary :class:`logging.LogRecord` of the emitting module's logger, so any handler
sees it (its message reads ``name key=value ...``, e.g. in pytest's ``caplog``); the event's
name and fields ride on the record for the two formatters here:

* :class:`HumanFormatter` (the default): ``<time> <LEVEL> <event> key=value ...``, e.g.
  ``2026-01-01T00:00:00.250Z INFO request_offloaded model=m peer=12D3... latency_s=0.2``.
  A value with a space, a quote, ``=``, a backslash or a character that is not printable
  (newlines included) is quoted and escaped, so one event is always one line. Records that
  are not events print ``<time> <LEVEL> <logger>: <message>``, the message escaped alike.
* :class:`JsonFormatter` (``--log-format json``): one JSON object per line, ``{"ts", "level",
  "event", "fields"}``, ASCII only (a U+2028 in a model name cannot split a line). A record
  that is not an event has ``event: "log"`` and fields ``logger`` and ``message``.

An exception attached to a record (``log.exception``) adds an ``error`` field (its type and
message); its traceback only with ``tracebacks=True`` (``-v``): then it follows the human
line on its own lines, or sits in a ``traceback`` field of the JSON object.

Time: the formatters stamp a line with the :class:`~p2pserve.clock.Clock` they are given
(default: the system's), read when the line is formatted (a stream handler formats as it
emits), never with the record's own ``created`` stamp. Nothing here rate-limits: code that
logs what a peer can trigger bounds it first (:class:`~p2pserve.membership.ratelimit.LineBudget`).
"""

from __future__ import annotations

import enum
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pserve.clock import Clock

__all__ = [
    "LOG_FORMATS",
    "HumanFormatter",
    "JsonFormatter",
    "StderrHandler",
    "configure",
    "escape",
    "event",
    "event_of",
    "render_fields",
]

LOG_FORMATS = ("human", "json")
"""What ``--log-format`` takes."""

_EVENT = "p2pserve_event"
_FIELDS = "p2pserve_fields"
_QUIET_UNLESS_DEBUG = {"libp2p": logging.CRITICAL, "p2pserve.http": logging.WARNING, "httpx": logging.WARNING,
                       "httpcore": logging.WARNING}
"""py-libp2p logs every failed dial and stream reset at ERROR (2-3 lines a second for an
unreachable bootstrap; p2pserve says what matters once, with its backoff); hypercorn's
start-up line repeats the ``api:`` banner; httpx logs every request at INFO (a backend's
load is read every second)."""


def event(logger: logging.Logger, name: str, /, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` on ``logger`` at ``level`` (default INFO).

    Values are kept as given for the formatters (bytes show as hex, enums as their value,
    floats rounded to 4 decimals, other objects as ``str``). Cheap when ``level`` is off.
    """
    if not logger.isEnabledFor(level):
        return
    clean = {k: _plain(v) for k, v in fields.items()}
    logger.log(level, "%s", _Line(name, clean), extra={_EVENT: name, _FIELDS: clean}, stacklevel=2)


def event_of(record: logging.LogRecord) -> tuple[str, dict[str, Any]] | None:
    """The event name and fields of ``record``, or None when it is not an event."""
    name = getattr(record, _EVENT, None)
    if not isinstance(name, str):
        return None
    fields = getattr(record, _FIELDS, None)
    return name, dict(fields) if isinstance(fields, Mapping) else {}


class _Line:
    """An event's message (``name key=value ...``), rendered only if a handler asks."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name, self.fields = name, fields

    def __str__(self) -> str:
        rest = render_fields(self.fields)
        return f"{self.name} {rest}" if rest else self.name


def _plain(value: Any) -> Any:
    """A field value as both formatters can show it (JSON types, or a string)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    return str(value)


# --- human format ------------------------------------------------------------------------------

_UNSAFE_RE = re.compile(r'[ "=\\]')


def escape(text: str) -> str:
    """``text`` with backslashes, double quotes and every character that is not printable
    (newlines, tabs, U+2028, ...) escaped as in JSON or Python, so it is one line."""
    out = []
    for c in text:
        if c == "\\" or c == '"':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        else:
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _scalar_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value_text(value: Any) -> str:
    """A value as ``key=`` shows it: bare when safe, else quoted and escaped; a list's items
    joined with commas (the JSON format keeps them apart)."""
    text = ",".join(_scalar_text(v) for v in value) if isinstance(value, list) else _scalar_text(value)
    if text and text.isprintable() and _UNSAFE_RE.search(text) is None:
        return text
    return f'"{escape(text)}"'


def render_fields(fields: Mapping[str, Any]) -> str:
    """``key=value`` pairs, space separated, values quoted where needed (one line)."""
    return " ".join(f"{escape(str(k)) if k else '_'}={_value_text(v)}" for k, v in fields.items())


_second: list[Any] = [None, ""]
"""The last whole second stamped and its ``YYYY-mm-ddTHH:MM:SS.`` text (one strftime a second)."""


def _stamp(clock: Clock | None) -> str:
    if clock is None:
        from p2pserve.clock import SYSTEM_CLOCK

        clock = SYSTEM_CLOCK
    ms = int(clock.wall() * 1000)
    second, millis = divmod(ms, 1000)
    if _second[0] != second:
        _second[0] = second
        _second[1] = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{_second[1]}{millis:03d}Z"


def _error(record: logging.LogRecord) -> str | None:
    exc = record.exc_info[1] if record.exc_info else None
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def _traceback(record: logging.LogRecord) -> str:
    assert record.exc_info
    return "".join(traceback.format_exception(*record.exc_info)).rstrip()


class HumanFormatter(logging.Formatter):
    """``<time> <LEVEL> <event> key=value ...`` (see the module docstring)."""

    def __init__(self, *, clock: Clock | None = None, tracebacks: bool = False) -> None:
        super().__init__()
        self.clock, self.tracebacks = clock, tracebacks

    def format(self, record: logging.LogRecord) -> str:
        head = f"{_stamp(self.clock)} {record.levelname}"
        ev = event_of(record)
        error = _error(record)
        if ev is not None:
            name, fields = ev
            if error is not None:
                fields["error"] = error
            rest = render_fields(fields)
            line = f"{head} {escape(name)}" + (f" {rest}" if rest else "")
        else:
            logger = record.name.removeprefix("p2pserve.")
            line = f"{head} {escape(logger)}: {escape(record.getMessage())}"
            if error is not None:
                line += f" error={_value_text(error)}"
        if self.tracebacks and record.exc_info:
            line += "\n" + _traceback(record)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event``, ``fields`` (module docstring)."""

    def __init__(self, *, clock: Clock | None = None, tracebacks: bool = False) -> None:
        super().__init__()
        self.clock, self.tracebacks = clock, tracebacks

    def format(self, record: logging.LogRecord) -> str:
        ev = event_of(record)
        if ev is not None:
            name, fields = ev
        else:
            name, fields = "log", {"logger": record.name, "message": record.getMessage()}
        error = _error(record)
        if error is not None:
            fields["error"] = error
            if self.tracebacks:
                fields["traceback"] = _traceback(record)
        obj = {"ts": _stamp(self.clock), "level": record.levelname.lower(), "event": name, "fields": fields}
        return json.dumps(obj, ensure_ascii=True, default=str, separators=(",", ":"))


class StderrHandler(logging.Handler):
    """Writes each formatted record and a newline to whatever ``sys.stderr`` is when it
    emits (so a test runner that swaps stderr gets the lines), flushing each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a log line must never take the node down
            self.handleError(record)


def configure(level: int, fmt: str = "human", *, tracebacks: bool = False, clock: Clock | None = None) -> logging.Handler:
    """Log to stderr at ``level`` in format ``fmt`` (one of :data:`LOG_FORMATS`): one
    :class:`StderrHandler` on the root logger, replacing the one an earlier call installed
    (other handlers are left alone). libp2p's loggers and the HTTP server's are quiet below
    DEBUG. ValueError for an unknown format."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (use one of {', '.join(LOG_FORMATS)})")
    formatter: logging.Formatter = (JsonFormatter if fmt == "json" else HumanFormatter)(clock=clock, tracebacks=tracebacks)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, StderrHandler):
            root.removeHandler(h)
    handler = StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in _QUIET_UNLESS_DEBUG.items():
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else quiet)
    return handler
