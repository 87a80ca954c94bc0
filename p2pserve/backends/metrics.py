"""Prometheus text parsing and the normalised backend load read from it (pure, no I/O).

This module owns two things:

* :func:`parse_prometheus`, a small parser for the Prometheus text exposition format
  (``name{label="value",...} value [timestamp]``; ``#`` comments; ``:`` in names; ``NaN``,
  ``+Inf``, ``-Inf``). Lines it cannot read are skipped, never fatal: a scrape is advisory.
* :func:`load_from_metrics`, which maps the gauges of vLLM, SGLang and llama.cpp's
  ``llama-server`` onto one :class:`~p2pserve.backends.base.Load` (``source="metrics"``):

  ==========  ==============================  ==========================  ============================
  field       vLLM                            SGLang                      llama-server
  ==========  ==============================  ==========================  ============================
  running     ``vllm:num_requests_running``   ``sglang:num_running_reqs``  ``llamacpp:requests_processing``
  queued      ``vllm:num_requests_waiting``   ``sglang:num_queue_reqs``    ``llamacpp:requests_deferred``
  kv usage    ``vllm:kv_cache_usage_perc``    ``sglang:token_usage``       (none)
              (else ``gpu_cache_usage_perc``)
  ==========  ==============================  ==========================  ============================

Counts are summed over label sets (vLLM ``engine``, SGLang ``tp_rank``, ``model_name``);
KV usage, a fraction, takes the maximum over label sets (the fullest engine bounds what can
be admitted) and is clamped to 0..1. NaN samples are ignored. If no known gauge is present
the result is ``None``: the caller then falls back to its own in-flight counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from p2pserve.backends.base import Load

__all__ = ["Sample", "load_from_metrics", "parse_prometheus"]

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample line: metric name (suffixes such as ``_total`` kept), labels, value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


def _parse_labels(text: str) -> tuple[tuple[str, str], ...] | None:
    labels: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL_RE.match(text, pos)
        if m is None:
            return None
        value = re.sub(r'\\[\\"n]', lambda e: _ESCAPES[e.group(0)], m.group(2))
        labels.append((m.group(1), value))
        pos = m.end()
    return tuple(labels)


def _parse_value(text: str) -> float | None:
    try:
        return float(text)  # accepts NaN, +Inf, -Inf, 1e3 ...
    except ValueError:
        return None


def parse_prometheus(text: str) -> list[Sample]:
    """Every well-formed sample line of ``text``, in order. Malformed lines are skipped."""
    samples: list[Sample] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None:
            continue
        labels = _parse_labels(m.group(2)) if m.group(2) is not None else ()
        value = _parse_value(m.group(3))
        if labels is None or value is None:
            continue
        samples.append(Sample(m.group(1), labels, value))
    return samples


def _values(samples: Iterable[Sample], name: str) -> list[float]:
    return [s.value for s in samples if s.name == name and not math.isnan(s.value)]


def _count(values: list[float]) -> int:
    total = sum(values)
    if math.isinf(total):
        return 0 if total < 0 else 2**31 - 1
    return max(0, round(total))


@dataclass(frozen=True, slots=True)
class _Dialect:
    running: str
    queued: str
    usage: tuple[str, ...]


_DIALECTS = (
    _Dialect("vllm:num_requests_running", "vllm:num_requests_waiting",
             ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
    _Dialect("sglang:num_running_reqs", "sglang:num_queue_reqs", ("sglang:token_usage",)),
    _Dialect("llamacpp:requests_processing", "llamacpp:requests_deferred", ()),
)


def load_from_metrics(text: str) -> Load | None:
    """The normalised load a ``/metrics`` body reports, or ``None`` if it has no known gauge.

    The first dialect (vLLM, then SGLang, then llama-server) with a running or queued gauge
    wins. A missing running or queued gauge counts as 0; a missing KV gauge gives
    ``token_usage=None``.
    """
    samples = parse_prometheus(text)
    for dialect in _DIALECTS:
        running = _values(samples, dialect.running)
        queued = _values(samples, dialect.queued)
        if not running and not queued:
            continue
        usage: float | None = None
        for name in dialect.usage:
            found = _values(samples, name)
            if found:
                usage = min(1.0, max(0.0, max(found)))
                break
        return Load(running=_count(running), queued=_count(queued), token_usage=usage, source="metrics")
    return None
