"""Rate limits for status gossip, and offence lines that cannot flood the log.

Pure logic: no I/O, no clock (``now`` is an argument, in seconds of trio's clock).

* :class:`TokenBuckets`: one token bucket per key (a status's origin, or the connection a
  message was relayed over). A bucket holds at most ``burst`` tokens and gains one every
  ``period`` seconds; a message is let through only if its key's bucket has a token. At
  most ``max_keys`` buckets are kept: a bucket is full again after ``burst * period``
  seconds, so forgetting the least recently used one (when a new key needs room) only ever
  forgives, never punishes, and memory stays bounded however many keys an attacker makes.
* :class:`OffenceLog`: whether to write a log line for an offence by a peer: the first of
  a kind at once, then at most one per peer and kind every ``every_s`` seconds, with the
  number of offences left unlogged since (bounded the same way).
* :class:`LineBudget`: whether to write a log line of a kind that many peers together can
  trigger (a peer seen, an offence by one of a thousand throwaway identities): at most
  ``burst`` lines at once, then one every ``period`` seconds, per kind, with the number of
  lines of that kind left out since. Kinds are the code's own names, so they are few.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LineBudget", "OffenceLog", "TokenBuckets"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """Token buckets by key (see the module docstring)."""

    __slots__ = ("_buckets", "burst", "max_keys", "period")

    def __init__(self, *, period: float, burst: float, max_keys: int = 8192) -> None:
        if period <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("need period > 0, burst >= 1, max_keys >= 1")
        self.period, self.burst, self.max_keys = period, burst, max_keys
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str, now: float, period: float | None) -> _Bucket | None:
        b = self._buckets.get(key)
        if b is not None and now > b.at:
            b.tokens = min(self.burst, b.tokens + (now - b.at) / (period or self.period))
            b.at = now
        return b

    def peek(self, key: str, now: float, period: float | None = None) -> bool:
        """Whether ``key`` has a token now (takes none). ``period`` overrides the refill
        period for this key (e.g. from what the key's owner declared)."""
        b = self._refilled(key, now, period)
        return b is None or b.tokens >= 1.0

    def take(self, key: str, now: float, period: float | None = None) -> bool:
        """Take a token for ``key``; False (and nothing taken) if it has none."""
        b = self._refilled(key, now, period)
        if b is None:
            buckets = self._buckets
            if len(buckets) >= self.max_keys:
                del buckets[next(iter(buckets))]  # least recently used: see the module docstring
            buckets[key] = _Bucket(self.burst - 1.0, now)
            return True
        # move to the end: dicts keep insertion order, so the front is least recently used
        del self._buckets[key]
        self._buckets[key] = b
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True


class OffenceLog:
    """Rate-limits log lines about one peer's offences (see the module docstring)."""

    __slots__ = ("_last", "every_s", "max_keys")

    def __init__(self, *, every_s: float = 60.0, max_keys: int = 4096) -> None:
        self.every_s, self.max_keys = every_s, max_keys
        self._last: dict[tuple[str, str], list[float]] = {}  # (peer, kind) -> [logged at, unlogged]

    def __len__(self) -> int:
        return len(self._last)

    def record(self, peer: str, kind: str, now: float) -> int | None:
        """Count one offence; the number of offences of this kind by ``peer`` that the line
        to write now covers (this one included), or None when no line is due."""
        key = (peer, kind)
        rec = self._last.get(key)
        if rec is None:
            if len(self._last) >= self.max_keys:
                del self._last[next(iter(self._last))]
            self._last[key] = [now, 0.0]
            return 1
        if now - rec[0] >= self.every_s:
            covered = int(rec[1]) + 1
            rec[0], rec[1] = now, 0.0
            return covered
        rec[1] += 1
        return None


class LineBudget:
    """Bounds log lines per kind (see the module docstring)."""

    __slots__ = ("_buckets", "_skipped")

    def __init__(self, *, burst: int = 20, period: float = 3.0) -> None:
        self._buckets = TokenBuckets(period=period, burst=burst, max_keys=256)
        self._skipped: dict[str, int] = {}

    def take(self, kind: str, now: float) -> int | None:
        """Whether a line of ``kind`` may be written now: None when not (it is counted), else
        how many lines of ``kind`` were left out since the last one written."""
        if not self._buckets.take(kind, now):
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return None
        return self._skipped.pop(kind, 0)
