"""Ratings anyone can recompute: Bradley-Terry strengths from the verdicts on the ledger.

Input: one ``(a, b, outcome)`` per counted verdict (``outcome`` is ``"A"`` when executor
``a`` won, ``"B"`` when ``b`` won, ``"tie"``). Output per executor: a rating on the Elo
scale, ``1000 + 400 log10(strength / average strength)`` (1000 is the average executor, a
100-point gap means the better one wins 64 % of their duels), a 95 % interval, and
win/loss/tie counts.

The fit is the maximum-likelihood Bradley-Terry model with ties counted as half a win for
each side (Chatbot Arena's convention), found by Hunter's MM iteration (2004), with one
virtual win and one virtual loss for every executor against a fixed anchor of strength 1
The anchor keeps every estimate finite (an executor that only won is not infinitely strong
after two duels) and pulls executors with few verdicts towards the middle; it weighs as
much as two duels. The interval is +-1.96 standard errors of the executor's log-strength
*relative to the average*, from the inverse of the observed Fisher information (so it
narrows as duels accumulate, even between only two executors); it is exact for the fitted
model, far cheaper than the Arena's bootstrap, and needs no randomness, so every node
prints the same numbers.

Pure and deterministic: executors are processed in sorted order, the iteration count is
fixed by a tolerance, and results are rounded to 0.1 rating points so that last-bit
differences between machines' ``log``/``exp`` never show.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ANCHOR_GAMES", "Rating", "bradley_terry"]

ANCHOR_GAMES = 1.0
"""Virtual wins and losses (each) of every executor against the anchor."""
_SCALE = 400.0 / math.log(10.0)
_MAX_ITER = 10_000
_TOL = 1e-10
_FULL_INVERSE_MAX = 400
"""Above this many executors the interval uses the diagonal of the information only."""


@dataclass(frozen=True, slots=True)
class Rating:
    rating: float
    low: float
    high: float
    wins: int
    losses: int
    ties: int

    def as_dict(self) -> dict[str, float | int]:
        return {"rating": self.rating, "low": self.low, "high": self.high,
                "wins": self.wins, "losses": self.losses, "ties": self.ties}


def bradley_terry(outcomes: Iterable[tuple[str, str, str]]) -> dict[str, Rating]:
    """Ratings of every executor that appears in ``outcomes`` (see the module docstring)."""
    games: dict[tuple[str, str], float] = defaultdict(float)  # unordered pair -> games
    score: dict[str, float] = defaultdict(float)  # wins + ties / 2
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for a, b, outcome in outcomes:
        if a == b or outcome not in ("A", "B", "tie"):
            raise ValueError(f"bad outcome {(a, b, outcome)!r}")
        games[min(a, b), max(a, b)] += 1.0
        if outcome == "tie":
            score[a] += 0.5
            score[b] += 0.5
            counts[a][2] += 1
            counts[b][2] += 1
        else:
            winner, loser = (a, b) if outcome == "A" else (b, a)
            score[winner] += 1.0
            counts[winner][0] += 1
            counts[loser][1] += 1
    players = sorted(counts)
    if not players:
        return {}
    index = {p: i for i, p in enumerate(players)}
    pairs = sorted((index[a], index[b], n) for (a, b), n in games.items())
    gamma = _fit(len(players), pairs, [score[p] for p in players])
    se = _standard_errors(gamma, pairs)
    mean = sum(math.log(g) for g in gamma) / len(gamma)
    out = {}
    for p, g, s in zip(players, gamma, se, strict=True):
        r = 1000.0 + _SCALE * (math.log(g) - mean)
        w, lo, t = counts[p]
        out[p] = Rating(round(r, 1), round(r - 1.96 * _SCALE * s, 1), round(r + 1.96 * _SCALE * s, 1), w, lo, t)
    return out


def _fit(n: int, pairs: list[tuple[int, int, float]], score: list[float]) -> list[float]:
    """MM iteration: gamma_i <- W_i / sum_j n_ij / (gamma_i + gamma_j), anchor included."""
    gamma = [1.0] * n
    wins = [s + ANCHOR_GAMES for s in score]
    for _ in range(_MAX_ITER):
        denom = [2 * ANCHOR_GAMES / (g + 1.0) for g in gamma]
        for i, j, games in pairs:
            d = games / (gamma[i] + gamma[j])
            denom[i] += d
            denom[j] += d
        new = [w / d for w, d in zip(wins, denom, strict=True)]
        if max(abs(math.log(x / y)) for x, y in zip(new, gamma, strict=True)) < _TOL:
            return new
        gamma = new
    return gamma


def _standard_errors(gamma: list[float], pairs: list[tuple[int, int, float]]) -> list[float]:
    """Standard errors of log(gamma_i) minus the mean log-strength, from the inverse
    observed information (its diagonal only, above :data:`_FULL_INVERSE_MAX` executors)."""
    n = len(gamma)
    info = [[0.0] * n for _ in range(n)]
    for i, g in enumerate(gamma):
        p = g / (g + 1.0)
        info[i][i] += 2 * ANCHOR_GAMES * p * (1 - p)
    for i, j, games in pairs:
        p = gamma[i] / (gamma[i] + gamma[j])
        v = games * p * (1 - p)
        info[i][i] += v
        info[j][j] += v
        info[i][j] -= v
        info[j][i] -= v
    if n > _FULL_INVERSE_MAX:
        return [1.0 / math.sqrt(info[i][i]) for i in range(n)]
    cov = _invert(info)
    row_mean = [sum(row) / n for row in cov]
    total_mean = sum(row_mean) / n
    return [math.sqrt(max(cov[i][i] - 2 * row_mean[i] + total_mean, 0.0)) for i in range(n)]


def _invert(m: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan inverse of a symmetric positive-definite matrix (the anchor makes the
    information matrix strictly diagonally dominant, so no pivoting is needed)."""
    n = len(m)
    a = [row[:] + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(m)]
    for col in range(n):
        pivot = a[col][col]
        row = a[col]
        for k in range(2 * n):
            row[k] /= pivot
        for r in range(n):
            if r != col and a[r][col] != 0.0:
                f = a[r][col]
                other = a[r]
                for k in range(2 * n):
                    other[k] -= f * row[k]
    return [r[n:] for r in a]
