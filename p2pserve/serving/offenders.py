"""What this node remembers about executors that misbehaved towards it. Pure: no I/O; time is
an argument (seconds of trio's clock).

An *offence* is something an honest executor does not do to a requester: take an offer and
then stall past a deadline, break the stream after accepting, break the protocol, sign a
receipt outside the bounds the requester can check, or leave an offer unanswered. Each
offence adds a strike and starts a cooling-off period of ``base_cooldown_s * 2**(strikes -
1)`` (at most ``max_cooldown_s``), during which the peer is not offered work at all. After
it, a peer with strikes left is *on probation* for ``probation_factor`` times that cooling-off:
it is offered work only after every clean candidate, whatever its stake, so stake alone
cannot buy an offender back to the front of the queue. Probation ends with time as well as
with service: a peer behind enough clean candidates is never offered work, so it could
never earn forgiveness by answering, and one slow start (an executor loading its model)
would keep an honest peer out for good. Its strikes stay (a repeat still cools it off
longer); each answer it completes with a valid receipt forgives ``forgive`` of a strike.

A peer that advertised capacity but cannot be reached (no stream to it opened within the
connect deadline: :attr:`Offence.UNREACHABLE`, recorded with :meth:`OffenderBook.unreachable`)
gets a milder rule, because the fault may be the network's or ours (a partition, our own
link) and a lone executor must get the next request as soon as it is back: no strike and
no cooling-off, but probation for ``unreachable_base_s * 2**(misses - 1)`` seconds (at most
``unreachable_max_s``), growing with each miss in a row and cleared by any stream that
opens to it (:meth:`OffenderBook.reached`) or any answer it completes. So an unreachable
peer is never offered work before a reachable one while its probation lasts, whatever its
stake (a sybil that advertises and never answers costs each requester one connect deadline
per probation period, not one per request), yet is still tried when nobody else can take
the request.

Memory is bounded (``max_entries`` offenders, the least struck forgotten first, and as many
unreachable peers, the one whose probation ends first forgotten first).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Offence", "OffenderBook"]


class Offence(enum.Enum):
    """What an executor did wrong."""

    NO_REPLY = "no-reply"
    """It advertised capacity but left an offer unanswered."""
    STALL = "stall"
    """It accepted, then sent nothing for longer than a deadline."""
    BROKEN = "broken"
    """It accepted, then its stream broke before the answer ended."""
    PROTOCOL = "protocol"
    """It sent something the infer protocol does not allow."""
    BAD_RECEIPT = "bad-receipt"
    """It signed a receipt that does not match the answer or claims too much."""
    UNREACHABLE = "unreachable"
    """It advertised capacity, but no stream to it opened within the connect deadline."""


@dataclass(slots=True)
class _Record:
    strikes: float = 0.0
    until: float = 0.0
    """End of its cooling-off (offered nothing before)."""
    probation_until: float = 0.0
    """End of its probation (offered work only after the clean peers before)."""
    last: Offence | None = None
    offences: int = 0


@dataclass(slots=True)
class _Misses:
    """Connect failures in a row of one peer, and when its probation for them ends."""

    count: int = 0
    until: float = 0.0


class OffenderBook:
    """Strikes, cooling-off and probation per peer (see the module docstring)."""

    def __init__(
        self,
        *,
        base_cooldown_s: float = 30.0,
        max_cooldown_s: float = 3600.0,
        forgive: float = 0.25,
        max_entries: int = 10_000,
        unreachable_base_s: float = 2.0,
        unreachable_max_s: float = 600.0,
        probation_factor: float = 4.0,
    ) -> None:
        if base_cooldown_s <= 0 or max_cooldown_s < base_cooldown_s or not 0 < forgive <= 1:
            raise ValueError("invalid offender book settings")
        if unreachable_base_s <= 0 or unreachable_max_s < unreachable_base_s or max_entries < 1 or probation_factor < 0:
            raise ValueError("invalid offender book settings")
        self.probation_factor = probation_factor
        self.base_cooldown_s = base_cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.forgive = forgive
        self.max_entries = max_entries
        self.unreachable_base_s = unreachable_base_s
        self.unreachable_max_s = unreachable_max_s
        self._records: dict[str, _Record] = {}
        self._misses: dict[str, _Misses] = {}

    def __len__(self) -> int:
        return len(self._records)

    def offence(self, peer: str, kind: Offence, now: float) -> float:
        """Record an offence; the cooling-off period it starts, in seconds."""
        rec = self._records.get(peer)
        if rec is None:
            self._make_room()
            rec = self._records[peer] = _Record()
        rec.strikes += 1
        rec.offences += 1
        rec.last = kind
        cooldown = min(self.base_cooldown_s * 2 ** (rec.strikes - 1), self.max_cooldown_s)
        rec.until = max(rec.until, now + cooldown)
        rec.probation_until = max(rec.probation_until, rec.until + cooldown * self.probation_factor)
        return cooldown

    def unreachable(self, peer: str, now: float) -> float:
        """No stream to ``peer`` opened in time: its probation, in seconds (see the module
        docstring; it grows with each miss in a row)."""
        miss = self._misses.get(peer)
        if miss is None:
            if len(self._misses) >= self.max_entries:
                del self._misses[min(self._misses, key=lambda p: (self._misses[p].until, p))]
            miss = self._misses[peer] = _Misses()
        miss.count += 1
        period: float = min(self.unreachable_base_s * 2.0 ** (miss.count - 1), self.unreachable_max_s)
        miss.until = now + period
        return period

    def reached(self, peer: str) -> None:
        """A stream to ``peer`` opened: its connect failures are forgiven."""
        self._misses.pop(peer, None)

    def misses(self, peer: str) -> int:
        """Connect failures in a row of ``peer`` (0 once reached again)."""
        miss = self._misses.get(peer)
        return 0 if miss is None else miss.count

    def served(self, peer: str) -> None:
        """``peer`` completed an answer with a valid receipt: forgive part of a strike (and
        every connect failure)."""
        self._misses.pop(peer, None)
        rec = self._records.get(peer)
        if rec is None:
            return
        rec.strikes = max(0.0, rec.strikes - self.forgive)
        if rec.strikes == 0.0:
            del self._records[peer]

    def cooling(self, peer: str, now: float) -> bool:
        """Whether ``peer`` is in a cooling-off period (offer it nothing)."""
        rec = self._records.get(peer)
        return rec is not None and now < rec.until

    def on_probation(self, peer: str, now: float | None = None) -> bool:
        """Whether ``peer`` has strikes left and, given ``now``, is still within its probation
        (offer it work only after every clean peer)."""
        rec = self._records.get(peer)
        return rec is not None and (now is None or now < rec.probation_until)

    def strikes(self, peer: str) -> float:
        rec = self._records.get(peer)
        return 0.0 if rec is None else rec.strikes

    def split(self, peers: Sequence[str], now: float) -> tuple[list[str], list[str]]:
        """``(clean, probation)``: the peers not cooling off, in their given order; on
        probation are those struck or unreachable lately."""
        clean, probation = [], []
        misses = self._misses
        for p in peers:
            rec = self._records.get(p)
            if rec is not None and now < rec.until:
                continue
            miss = misses.get(p)
            if (rec is None or now >= rec.probation_until) and (miss is None or now >= miss.until):
                clean.append(p)
            else:
                probation.append(p)
        return clean, probation

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every remembered offender, most struck first, then the peers unreachable lately
        (for status output)."""
        rows = sorted(self._records.items(), key=lambda kv: (-kv[1].strikes, kv[0]))
        out = [
            {
                "peer_id": peer,
                "strikes": round(rec.strikes, 2),
                "offences": rec.offences,
                "last": rec.last.value if rec.last else None,
                "cooling_off_s": round(max(0.0, rec.until - now), 1),
                "unreachable": self.misses(peer),
            }
            for peer, rec in rows
        ]
        for peer, miss in sorted(self._misses.items(), key=lambda kv: (-kv[1].count, kv[0])):
            if peer not in self._records:
                out.append({
                    "peer_id": peer, "strikes": 0.0, "offences": 0, "last": Offence.UNREACHABLE.value,
                    "cooling_off_s": 0.0, "unreachable": miss.count,
                })
        return out

    def _make_room(self) -> None:
        while len(self._records) >= self.max_entries:
            victim = min(self._records, key=lambda p: (self._records[p].strikes, p))
            del self._records[victim]
