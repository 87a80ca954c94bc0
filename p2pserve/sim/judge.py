"""Answer quality in the simulator: quality classes, the marker a simulated answer carries,
and :class:`SimulatedJudge`, a judging method that reads the markers instead of the text.

Simulated backends write no real text, so duels need ground truth of another kind: each
simulated model belongs to a :class:`QualityClass`, and its answers start with
``[q=<class name>]`` (:func:`marker`); the per-answer ``[correct]``/``[wrong]`` markers of
:mod:`p2pserve.sim.backend` are read too (:data:`CORRECTNESS_CLASSES`). The judge reads both markers (:func:`quality_of`),
computes the probability that answer A is the better one from the classes' latent
strengths (:func:`p_better`), draws which one truly is, then errs like a real judge: with
``accuracy`` it names the truly better answer, with ``position_bias`` it names "A" whatever
the answers. Every draw comes from ``derive(seed, "sim-judge", question, answer_a,
answer_b)``: the same duel gets the same verdict from the same judge, in any order of events.

Why latent strengths (research ``duel-and-simulation.md`` A3): WWW.Serve reports each model's
win rate against the field (Qwen3-8B 0.57, 4B 0.53, 0.6B 0.39; :data:`PAPER_WIN_RATES`). A
class's win probability ``p`` against an average opponent becomes the Bradley-Terry strength
``p / (1 - p)`` (odds against strength 1), and ``P(i beats j) = s_i / (s_i + s_j)``, the model
``p2pserve.duel.ratings`` fits, so a run's ratings can be checked against the classes it
was given: 8B beats 4B with 0.540 and 0.6B with 0.675, the head-to-head figures of A3. Those
paper rates were measured through noisy judges; :func:`latent_from_observed` undoes a judge
accuracy so a simulated run reproduces them.

Pure: no trio, no I/O; ``judge`` is ``async`` only to meet
:class:`~p2pserve.duel.methods.JudgeMethod`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pserve.duel.judging import JudgeResult, Winner, swap
from p2pserve.errors import ConfigError
from p2pserve.rng import derive

__all__ = [
    "CORRECTNESS_CLASSES",
    "PAPER_WIN_RATES",
    "QualityClass",
    "SimulatedJudge",
    "latent_from_observed",
    "marker",
    "p_better",
    "parse_classes",
    "quality_of",
    "strength",
]

PAPER_WIN_RATES: Mapping[str, float] = {
    "qwen3-0.6b": 0.39,
    "qwen3-4b": 0.53,
    "qwen3-8b": 0.57,
    "qwen3-8b-fp8wo": 0.54,
    "qwen3-8b-int4wo-128": 0.49,
    "qwen3-8b-int4wo-32": 0.47,
}
"""Duel win rates WWW.Serve reports (project page figures 9 and 10; ``research/wwwserve.md``
§8.6): model size, and Qwen3-8B quantized with torchao. Observed through its judges."""

CORRECTNESS_CLASSES: Mapping[str, float] = {"correct": 1.0, "wrong": 0.0}
"""What ``[correct]`` and ``[wrong]`` (the markers of :mod:`p2pserve.sim.backend`, which
draws each answer's correctness from its node's quality) count as, unless ``classes`` says
otherwise: a correct answer beats a wrong one, two alike are equal."""

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_MARKER = re.compile(r"\s*\[(?:q=([A-Za-z0-9_.\-]{1,64})|(correct|wrong))\]")


def marker(name: str) -> str:
    """The prefix a simulated answer of class ``name`` starts with: ``[q=name]``."""
    _check_name(name, "name")
    return f"[q={name}]"


def quality_of(text: str) -> str | None:
    """The class named by the marker ``text`` starts with (leading whitespace allowed), or
    None: an answer without one (a real backend's, or a truncated stream) is of unknown
    quality. ``[correct]`` and ``[wrong]`` name the classes ``correct`` and ``wrong``. Only
    the start counts, so a marker quoted inside an answer claims nothing."""
    found = _MARKER.match(text)
    return None if found is None else found.group(1) or found.group(2)


def _check_name(name: object, path: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{path}: a quality class name is 1-64 letters, digits, '_', '.' or '-' (got {name!r})")


def _check_probability(p: object, path: str) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
        raise ConfigError(f"{path}: must be a probability in [0, 1] (got {p!r})")
    return float(p)


@dataclass(frozen=True, slots=True)
class QualityClass:
    """A class of answers: ``win_probability`` is how often it beats an average answer
    (strength 1) with a perfect judge. 0 never wins (a random responder), 1 always does."""

    name: str
    win_probability: float

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        _check_probability(self.win_probability, "win_probability")

    @property
    def strength(self) -> float:
        """Bradley-Terry strength: the odds against an average answer (``inf`` at 1)."""
        return strength(self.win_probability)

    def beats(self, other: QualityClass) -> float:
        """Probability an answer of this class is better than one of ``other``."""
        return p_better(self.win_probability, other.win_probability)


def strength(win_probability: float) -> float:
    """Bradley-Terry strength of a win probability against the average answer: its odds."""
    return math.inf if win_probability >= 1 else win_probability / (1 - win_probability)


def p_better(a: float, b: float) -> float:
    """Probability that an answer of win probability ``a`` beats one of ``b`` (both against
    the average answer): Bradley-Terry over their strengths. Equal classes give 0.5 (also
    two certain winners or two certain losers); a certain winner beats any other."""
    sa, sb = strength(a), strength(b)
    if sa == sb:
        return 0.5
    if math.isinf(sa) or math.isinf(sb):
        return 1.0 if math.isinf(sa) else 0.0
    return sa / (sa + sb)


def latent_from_observed(observed: float, accuracy: float) -> float:
    """The true win probability that a judge of ``accuracy`` reports as ``observed``:
    inverts ``p' = a·p + (1 - a)(1 - p)`` (A3), clamped to [0, 1]. Needs ``accuracy != 0.5``
    (a coin-flip judge reveals nothing)."""
    if accuracy == 0.5:
        raise ConfigError("accuracy: a judge at 0.5 reveals nothing; the latent rate is undefined")
    return min(1.0, max(0.0, (observed - (1 - accuracy)) / (2 * accuracy - 1)))


def parse_classes(data: object, path: str = "classes") -> dict[str, QualityClass]:
    """``{name: win_probability, ...}`` from a scenario, e.g. ``{qwen3-8b: 0.57, noise: 0.0}``."""
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"{path}: must be a non-empty mapping of class name to win probability (got {data!r})")
    out = {}
    for name, p in data.items():
        _check_name(name, f"{path}.{name}")
        out[name] = QualityClass(name, _check_probability(p, f"{path}.{name}"))
    return out


class SimulatedJudge:
    """A :class:`~p2pserve.duel.methods.JudgeMethod` for simulated answers (see the module
    docstring). Pass it to a judge node directly, or by name as
    ``p2pserve.sim.judge:SimulatedJudge`` with ``classes=...`` among the dependencies.

    * ``classes``: class name to win probability (:func:`parse_classes`'s mapping; the
      values of a ``{name: QualityClass}`` mapping work too), on top of
      :data:`CORRECTNESS_CLASSES` (so ``{}`` judges ``[correct]``/``[wrong]`` answers). An
      answer with no marker, or a class not listed, counts as ``unknown`` (default 0.5).
    * ``accuracy``: probability of naming the truly better answer (A3: 0.66 to 0.9 for real
      LLM judges). 1 always names it, 0.5 is a coin flip, below 0.5 prefers the worse.
    * ``position_bias``: probability of answering "A" without looking, checked first.
    * ``seed``: give each judge node its own (its index, say): judges of the same duel with
      the same seed draw the same verdict, and the research's case for three judges rests
      on independent errors.
    * ``orders``: 1 judges once and returns a plain :class:`JudgeResult` (winner only);
      2 judges both orders, as ``llm-pairwise`` does (same truth, independent errors per
      order) and returns ``JudgeResult.from_orders``: disagreeing orders tie, so a
      position-biased judge yields ties, not wins for A.
    * ``equal_ties``: when both answers have equal strength (the same class, say), an
      unbiased judgement is a tie: nothing in the ground truth separates them. False draws
      a winner instead (an even split, as a judge forced to choose).
    """

    def __init__(
        self,
        classes: Mapping[str, float | QualityClass],
        accuracy: float = 0.9,
        position_bias: float = 0.0,
        seed: int | str | bytes = 0,
        *,
        orders: int = 1,
        equal_ties: bool = True,
        unknown: float = 0.5,
        name: str = "simulated",
        **_: Any,
    ) -> None:
        if not isinstance(classes, Mapping):
            raise ConfigError(f"classes: must be a mapping of class name to win probability (got {classes!r})")
        raw = {k: v.win_probability if isinstance(v, QualityClass) else v for k, v in classes.items()}
        given = {k: c.win_probability for k, c in parse_classes(raw).items()} if raw else {}
        self.classes = {**CORRECTNESS_CLASSES, **given}
        self.accuracy = _check_probability(accuracy, "accuracy")
        self.position_bias = _check_probability(position_bias, "position_bias")
        self.unknown = _check_probability(unknown, "unknown")
        if orders not in (1, 2):
            raise ConfigError(f"orders: must be 1 or 2 (got {orders!r})")
        self.orders, self.equal_ties, self.seed, self.name = orders, equal_ties, seed, name

    def win_probability(self, answer: str) -> float:
        """The win probability of ``answer``'s class (``unknown`` without a known marker)."""
        return self.classes.get(quality_of(answer) or "", self.unknown)

    def p_a_better(self, answer_a: str, answer_b: str) -> float:
        """Probability that ``answer_a`` is truly the better one."""
        return p_better(self.win_probability(answer_a), self.win_probability(answer_b))

    async def judge(self, question: str, answer_a: str, answer_b: str) -> JudgeResult:
        return self.decide(question, answer_a, answer_b)

    def decide(self, question: str, answer_a: str, answer_b: str) -> JudgeResult:
        """The verdict, synchronously (what :meth:`judge` returns)."""
        a, b = self.win_probability(answer_a), self.win_probability(answer_b)
        rng = derive(self.seed, "sim-judge", question, answer_a, answer_b)
        truth = Winner.A if rng.random() < p_better(a, b) else Winner.B
        equal = strength(a) == strength(b)
        first = self._one(rng.random(), rng.random(), truth, equal)
        if self.orders == 1:
            return JudgeResult(first, self.name)
        # The swapped judgement sees B in position A: same truth, its own errors.
        return JudgeResult.from_orders(self.name, first, self._one(rng.random(), rng.random(), swap(truth), equal))

    def _one(self, bias_draw: float, accuracy_draw: float, truth: Winner, equal: bool) -> Winner:
        """One judgement of one order; ``truth`` is the truly better position."""
        if bias_draw < self.position_bias:
            return Winner.A
        if equal and self.equal_ties:
            return Winner.TIE
        return truth if accuracy_draw < self.accuracy else swap(truth)
