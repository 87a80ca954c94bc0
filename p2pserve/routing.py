"""Proof-of-Stake choice of executors: which peers to offer a request to, in which order.

Pure logic: no I/O, no clock, and randomness only from the ``random.Random`` passed in, so
the same seed and the same input order give the same choice (the simulator and the tests
rely on it).

The rule (``docs/protocol.md``, "Inference", item 1):

* Candidates are the peers the caller passes in: peers that serve the model, are alive
  (not expired), accept work and are not frozen (:meth:`p2pserve.membership.table.PeerTable.candidates`
  already filters that).
* Staked peers are ordered by Efraimidis–Spirakis weighted sampling without replacement:
  each gets the key ``u ** (1 / stake)`` with ``u ~ U(0, 1)``, highest key first. The first
  pick is therefore drawn with probability ``stake / total``, the second ∝ stake among the
  rest, and so on; no peer appears twice.
* With probability ``newcomer_share`` the *first* pick is instead drawn uniformly among
  the zero-stake candidates (if any). A peer without stake would otherwise never be drawn
  and never earn its first credit.
* Zero-stake candidates not picked as newcomers follow the staked ones, in random order:
  they are last-resort fallbacks that only matter when every staked peer refused.
* If nobody has stake, the order is uniform.

The result is cut to ``k`` peer IDs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from p2pserve.membership.table import PeerEntry

__all__ = ["choose_candidates", "pos_order"]


def _entry_stake(entry: PeerEntry) -> int:
    return entry.status.stake


def pos_order(
    entries: Sequence[PeerEntry],
    rng: random.Random,
    newcomer_share: float,
    *,
    stake_of: Callable[[PeerEntry], int] = _entry_stake,
) -> list[str]:
    """Every candidate's peer ID, in PoS offer order (see the module docstring).

    ``stake_of`` gives a peer's stake in micro-credits; the default is the stake the peer
    claims in its status (the node passes a ledger lookup when it has one). Negative
    stakes count as zero. Consumes the RNG deterministically for a given input.
    """
    if not 0.0 <= newcomer_share <= 1.0:
        raise ValueError("newcomer_share must be within [0, 1]")
    staked: list[tuple[float, str]] = []
    newcomers: list[str] = []
    for entry in entries:
        stake = stake_of(entry)
        if stake > 0:
            u = rng.random()
            # key = u ** (1/stake), compared in log space: log(u) / stake, highest first.
            # u == 0.0 is possible (and has key -inf: last), never an error.
            key = math.log(u) / stake if u > 0.0 else -math.inf
            staked.append((key, entry.peer_id))
        else:
            newcomers.append(entry.peer_id)
    staked.sort(key=lambda kv: kv[0], reverse=True)
    order = [pid for _, pid in staked]
    rng.shuffle(newcomers)
    if newcomers and order and rng.random() < newcomer_share:
        # newcomers[0] is a uniform draw: the list was just shuffled
        return [newcomers[0], *order, *newcomers[1:]]
    return order + newcomers


def choose_candidates(
    entries: Sequence[PeerEntry],
    rng: random.Random,
    k: int,
    newcomer_share: float,
    *,
    stake_of: Callable[[PeerEntry], int] = _entry_stake,
) -> list[str]:
    """The first ``k`` peer IDs of :func:`pos_order`: the peers to offer a request to, in order."""
    if k < 0:
        raise ValueError("k must be >= 0")
    return pos_order(entries, rng, newcomer_share, stake_of=stake_of)[:k]
