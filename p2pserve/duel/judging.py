"""The judge's rules, pure: the pairwise prompt, the strict verdict parse, the two-order
combination, the similarity margin, and what a judgement reports.

Everything a verdict depends on, other than the judge's own model, is here, so every node
(and ``audit``) reads the same rules and tests can check them exhaustively. No I/O, no
clock, no randomness: the methods in :mod:`p2pserve.duel.methods` call a model and hand its
output to these functions.

Rules, and why:

* **Strict parse.** A pairwise judge must write exactly one kind of verdict token,
  ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie); none, or two different ones, is a tie. The
  original system took whichever token came last, so a judge that rambled "[[A]]... or
  maybe [[B]]" gave B a win it never stated, and an answer that smuggled a token into the
  judge's output could choose its own verdict.
* **Both orders.** The pair is judged as (A, B) and again swapped; the swapped verdict is
  mapped back and the two must agree, or it is a tie (FastChat's MT-Bench rule). A judge
  that always prefers the first position therefore yields only ties, never a winner.
* **Integer scores.** Similarity scores are carried as integers in millionths
  (:data:`SCORE_SCALE`) and the margin is applied to those integers, so whoever holds a
  :class:`JudgeResult` recomputes its verdict exactly: no floats reach a signed message.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from p2pserve.errors import ConfigError, LocalProtocolError

__all__ = [
    "MAX_METHOD_NAME",
    "PAIRWISE_SYSTEM_PROMPT",
    "SCORE_SCALE",
    "SIMILARITY_MARGIN",
    "VERDICT_TOKENS",
    "JudgeResult",
    "Winner",
    "combine_orders",
    "pairwise_messages",
    "parse_verdict",
    "similarity_verdict",
    "swap",
    "to_millionths",
]


class Winner(enum.StrEnum):
    """Which answer won a judgement. A ``str``, so it goes on the wire as its value."""

    A = "A"
    B = "B"
    TIE = "tie"


VERDICT_TOKENS: dict[str, Winner] = {"[[A]]": Winner.A, "[[B]]": Winner.B, "[[C]]": Winner.TIE}
"""The only strings :func:`parse_verdict` reads as a verdict (exact, case-sensitive)."""

SCORE_SCALE = 1_000_000
"""Scores are integers in millionths: a cosine of 0.93 is 930_000."""

SIMILARITY_MARGIN = 20_000
"""Millionths (0.02): closer than this, two answers' similarity to the reference is a tie.

MiniLM separates a right from a wrong on-topic answer by 0.02 to 0.2 (``docs/notes-backends.md``,
"Judging with MiniLM"); below 0.02 the difference says more about wording than about correctness."""

MAX_METHOD_NAME = 100
"""Longest method name a :class:`JudgeResult` carries (``module:Class`` included)."""

PAIRWISE_SYSTEM_PROMPT = (
    "You are an impartial judge. Two AI assistants have each answered the user question shown "
    "below; decide which answer is better. Choose the assistant that follows the user's "
    "instructions and answers the question better, weighing helpfulness, relevance, accuracy, "
    "depth, creativity and level of detail. First compare the two answers and explain your "
    "reasoning briefly. Do not let the order in which the answers are shown affect your "
    "decision, do not let the length of an answer influence you, and do not favour either "
    "assistant because of its name. Be as objective as possible. After your explanation, give "
    'your final verdict exactly once, in exactly this format: "[[A]]" if assistant A is better, '
    '"[[B]]" if assistant B is better, "[[C]]" for a tie. Do not write any of these three '
    "markers anywhere else."
)
"""The judge's instructions: the shape of FastChat's ``pair-v2`` MT-Bench judge prompt,
plus the "exactly once" that the strict parse relies on."""


def _defuse(text: str) -> str:
    """``text`` with every verdict token reduced to single brackets (``[[A]]`` → ``[A]``).

    The judge model then meets the tokens only in its instructions: an answer cannot plant
    one for the model to echo, and a quoted one cannot turn a clear verdict into a tie.
    """
    for token in VERDICT_TOKENS:
        text = text.replace(token, token[1:-1])
    return text


def pairwise_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The OpenAI chat messages that ask a judge model to compare ``answer_a`` and ``answer_b``.

    The user message lays out the question and both answers between start/end markers, as
    FastChat's ``pair-v2`` template does. Verdict tokens inside the three texts are defused
    (see :func:`_defuse`). Ask once per order: ``pairwise_messages(q, a, b)`` and
    ``pairwise_messages(q, b, a)``, then :func:`combine_orders`.
    """
    user = (
        f"[User Question]\n{_defuse(question)}\n\n"
        f"[The Start of Assistant A's Answer]\n{_defuse(answer_a)}\n[The End of Assistant A's Answer]\n\n"
        f"[The Start of Assistant B's Answer]\n{_defuse(answer_b)}\n[The End of Assistant B's Answer]"
    )
    return [{"role": "system", "content": PAIRWISE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> Winner:
    """The verdict a judge model wrote, read strictly.

    Exactly one kind of token among ``[[A]]``, ``[[B]]``, ``[[C]]`` must occur (the same
    token repeated is still one verdict); ``[[C]]`` is a tie. No token, or two different
    ones, is a tie too: an unreadable judgement moves nothing. Never "the last one wins".
    """
    found = {winner for token, winner in VERDICT_TOKENS.items() if token in text}
    return found.pop() if len(found) == 1 else Winner.TIE


def swap(winner: Winner) -> Winner:
    """The same verdict with the answers' positions exchanged (A ↔ B; a tie stays a tie)."""
    return {Winner.A: Winner.B, Winner.B: Winner.A, Winner.TIE: Winner.TIE}[winner]


def combine_orders(first: Winner, swapped: Winner) -> Winner:
    """One verdict from two judgements of the same pair, in both orders.

    ``first`` judged (A = answer 1, B = answer 2); ``swapped`` judged them the other way
    round, so it is mapped back with :func:`swap`. The two must agree, or it is a tie.
    """
    return first if first == swap(swapped) else Winner.TIE


def similarity_verdict(score_a: int, score_b: int, margin: int = SIMILARITY_MARGIN) -> Winner:
    """The answer whose score (millionths) is higher by at least ``margin``, else a tie.

    Equal scores tie whatever the margin (0 included). Raises
    :class:`~p2pserve.errors.ConfigError` for a negative margin.
    """
    if margin < 0:
        raise ConfigError(f"similarity margin must be >= 0 millionths, got {margin}")
    if score_a == score_b or abs(score_a - score_b) < margin:
        return Winner.TIE
    return Winner.A if score_a > score_b else Winner.B


def to_millionths(score: float) -> int:
    """``score`` (a cosine or a fraction, in [-1, 1]) as an integer in millionths.

    Rounded, then clamped to ±:data:`SCORE_SCALE` (a normalized cosine may come out as
    1.0000001). Raises :class:`~p2pserve.errors.LocalProtocolError` for NaN or infinity,
    which only a broken embedder produces.
    """
    if not math.isfinite(score):
        raise LocalProtocolError(f"score is not a finite number: {score!r}")
    return max(-SCORE_SCALE, min(SCORE_SCALE, round(score * SCORE_SCALE)))


@dataclass(frozen=True, slots=True)
class JudgeResult:
    """One judgement: the winner, the method that judged, and the evidence for the verdict.

    The evidence is small integers and strings, ready for a signed message:

    * ``verdicts``: for a pairwise method, the two parsed verdicts as the model wrote them,
      ``(first order, swapped order)``; ``winner`` must equal
      ``combine_orders(*verdicts)``. Empty for other methods.
    * ``scores``: for a scoring method, ``(score_a, score_b)`` in millionths, each within
      ±:data:`SCORE_SCALE` (reference-similarity: cosine to the judge's own answer; fake:
      the fraction of known words). Empty for other methods.

    Valid by construction: anything else raises :class:`~p2pserve.errors.LocalProtocolError`.
    """

    winner: Winner
    method: str
    verdicts: tuple[Winner, Winner] | tuple[()] = ()
    scores: tuple[int, int] | tuple[()] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.winner, Winner):
            raise LocalProtocolError(f"winner must be a Winner, got {self.winner!r}")
        if not self.method or len(self.method) > MAX_METHOD_NAME:
            raise LocalProtocolError(f"method name must have 1..{MAX_METHOD_NAME} characters")
        if self.verdicts:
            if len(self.verdicts) != 2 or not all(isinstance(v, Winner) for v in self.verdicts):
                raise LocalProtocolError(f"verdicts must be two Winners, got {self.verdicts!r}")
            if self.winner != combine_orders(*self.verdicts):
                raise LocalProtocolError(f"winner {self.winner} does not follow from verdicts {self.verdicts}")
        if self.scores:
            if len(self.scores) != 2 or not all(_is_score(s) for s in self.scores):
                raise LocalProtocolError(f"scores must be two integers within ±{SCORE_SCALE}, got {self.scores!r}")

    @classmethod
    def from_orders(cls, method: str, first: Winner, swapped: Winner) -> JudgeResult:
        """A pairwise judgement from its two per-order verdicts (see :func:`combine_orders`)."""
        return cls(combine_orders(first, swapped), method, verdicts=(first, swapped))

    @classmethod
    def from_scores(cls, method: str, score_a: int, score_b: int, margin: int) -> JudgeResult:
        """A scored judgement: :func:`similarity_verdict` over the two scores (millionths)."""
        return cls(similarity_verdict(score_a, score_b, margin), method, scores=(score_a, score_b))


def _is_score(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -SCORE_SCALE <= value <= SCORE_SCALE
