"""The simulator's quality classes and judge (p2pserve.sim.judge): the marker, Bradley-Terry
from win probabilities (research A3's figures), and SimulatedJudge's accuracy, position
bias, ties and determinism. Frequencies are measured over many distinct duels (the verdict
of one duel is fixed by its texts and the seed) with bounds of several standard errors."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from p2pserve.duel.judging import JudgeResult, Winner
from p2pserve.duel.methods import JudgeMethod, load_method
from p2pserve.errors import ConfigError
from p2pserve.sim.judge import (
    PAPER_WIN_RATES,
    QualityClass,
    SimulatedJudge,
    latent_from_observed,
    marker,
    p_better,
    parse_classes,
    quality_of,
)

CLASSES = {"big": 0.57, "mid": 0.53, "small": 0.39, "oracle": 1.0, "noise": 0.0}
N = 4000


def answer(cls: str | None, i: int) -> str:
    return (marker(cls) if cls else "") + f" the answer to question {i}"


def shares(judge: SimulatedJudge, a: str | None, b: str | None, n: int = N) -> dict[Winner, float]:
    """How often each verdict comes out over ``n`` distinct duels of class ``a`` vs ``b``."""
    counts = Counter(judge.decide(f"q{i}", answer(a, i), answer(b, i)).winner for i in range(n))
    return {w: counts[w] / n for w in Winner}


def near(share: float, p: float, n: int = N) -> bool:
    return bool(abs(share - p) <= 5 * (max(p * (1 - p), 1e-4) / n) ** 0.5 + 1e-9)


# --- marker and classes --------------------------------------------------------------------


def test_marker_round_trip_and_unknown_answers() -> None:
    assert marker("qwen3-0.6b") == "[q=qwen3-0.6b]"
    assert quality_of(marker("qwen3-0.6b") + "The answer is 4.") == "qwen3-0.6b"
    assert quality_of("  \n[q=big] text") == "big"
    assert quality_of("The answer is 4.") is None
    assert quality_of("I am sure: [q=oracle] is what I am") is None  # only the start counts
    assert quality_of("[q=] x") is None and quality_of("") is None
    assert quality_of("[correct] tok tok") == "correct" and quality_of(" [wrong] tok") == "wrong"
    with pytest.raises(ConfigError, match="quality class name"):
        marker("has space")


def test_bradley_terry_reproduces_research_a3() -> None:
    """8B (0.57) beats 4B (0.53) head to head with 0.540, and 0.6B (0.39) with 0.675."""
    assert p_better(0.57, 0.53) == pytest.approx(0.540, abs=0.001)
    assert p_better(0.57, 0.39) == pytest.approx(0.675, abs=0.001)
    assert p_better(0.5, 0.5) == 0.5 and p_better(0.3, 0.3) == 0.5
    for a in (0.0, 0.2, 0.57, 1.0):
        for b in (0.0, 0.39, 0.9, 1.0):
            assert p_better(a, b) + p_better(b, a) == pytest.approx(1.0)
    assert p_better(1.0, 0.99) == 1.0 and p_better(0.0, 0.01) == 0.0 and p_better(1.0, 1.0) == 0.5
    assert p_better(0.7, 0.5) == pytest.approx(0.7)  # against the average answer: its own rate
    big, small = QualityClass("big", 0.57), QualityClass("small", 0.39)
    assert big.beats(small) == p_better(0.57, 0.39) and big.strength == pytest.approx(0.57 / 0.43)


def test_latent_from_observed_undoes_judge_noise() -> None:
    for accuracy in (0.66, 0.9, 1.0):
        latent = latent_from_observed(0.57, accuracy)
        assert accuracy * latent + (1 - accuracy) * (1 - latent) == pytest.approx(0.57)
    assert latent_from_observed(0.99, 0.7) == 1.0  # clamped
    with pytest.raises(ConfigError, match="accuracy"):
        latent_from_observed(0.6, 0.5)


def test_parse_classes_and_its_errors() -> None:
    assert parse_classes(PAPER_WIN_RATES)["qwen3-8b"] == QualityClass("qwen3-8b", 0.57)
    with pytest.raises(ConfigError, match=r"classes.big: must be a probability"):
        parse_classes({"big": 1.5})
    with pytest.raises(ConfigError, match=r"classes.a b: a quality class name"):
        parse_classes({"a b": 0.5})
    with pytest.raises(ConfigError, match="classes: must be a non-empty mapping"):
        parse_classes({})
    with pytest.raises(ConfigError, match="win_probability"):
        QualityClass("x", -0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"accuracy": 1.2}, "accuracy"), ({"position_bias": -0.1}, "position_bias"), ({"orders": 3}, "orders"),
     ({"unknown": 2}, "unknown"), ({"classes": {"x": "high"}}, r"classes.x"), ({"classes": [0.5]}, "classes")],
)  # fmt: skip
def test_judge_validates_its_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SimulatedJudge(**{"classes": CLASSES, **kwargs})


# --- the judge -----------------------------------------------------------------------------


async def test_it_is_a_judging_method_loadable_by_name() -> None:
    judge = load_method("p2pserve.sim.judge:SimulatedJudge", classes=CLASSES, accuracy=1.0, generate=None, embedder=None)
    assert isinstance(judge, JudgeMethod) and isinstance(judge, SimulatedJudge)
    result = await judge.judge("q", answer("oracle", 0), answer("noise", 0))
    assert result == JudgeResult(Winner.A, "simulated")
    assert SimulatedJudge({"a": QualityClass("a", 0.6)}, name="sim-k3").classes["a"] == 0.6


def test_verdicts_are_deterministic_per_duel_and_per_seed() -> None:
    judge = SimulatedJudge(CLASSES, accuracy=0.7, seed=1)
    duels = [(f"q{i}", answer("big", i), answer("small", i)) for i in range(200)]
    first = [judge.decide(*d) for d in duels]
    assert first == [SimulatedJudge(CLASSES, accuracy=0.7, seed=1).decide(*d) for d in reversed(duels)][::-1]
    assert first != [SimulatedJudge(CLASSES, accuracy=0.7, seed=2).decide(*d) for d in duels]


@pytest.mark.parametrize("orders", [1, 2])
def test_a_perfect_judge_always_picks_the_certainly_better_answer(orders: int) -> None:
    judge = SimulatedJudge(CLASSES, accuracy=1.0, orders=orders)
    assert shares(judge, "oracle", "small")[Winner.A] == 1.0
    assert shares(judge, "mid", "noise")[Winner.A] == 1.0
    assert shares(judge, "noise", "big")[Winner.B] == 1.0


def test_a_perfect_judge_reports_the_latent_head_to_head_rate() -> None:
    judge = SimulatedJudge(CLASSES, accuracy=1.0)
    assert near(shares(judge, "big", "small")[Winner.A], p_better(0.57, 0.39))
    assert near(shares(judge, "small", "big")[Winner.B], p_better(0.57, 0.39))


def test_judge_noise_follows_the_research_formula() -> None:
    """Observed p' = a·p + (1 - a)(1 - p) (research A3)."""
    judge, p = SimulatedJudge(CLASSES, accuracy=0.8), p_better(0.57, 0.39)
    assert near(shares(judge, "big", "small")[Winner.A], 0.8 * p + 0.2 * (1 - p))
    assert shares(SimulatedJudge(CLASSES, accuracy=0.0), "oracle", "noise")[Winner.B] == 1.0  # always wrong


def test_an_accuracy_of_one_half_is_a_coin_flip() -> None:
    judge = SimulatedJudge(CLASSES, accuracy=0.5)
    for a, b in (("oracle", "noise"), ("big", "small")):
        got = shares(judge, a, b)
        assert near(got[Winner.A], 0.5) and got[Winner.TIE] == 0


def test_position_bias_shows_in_one_order_and_becomes_ties_in_two() -> None:
    judge = SimulatedJudge(CLASSES, accuracy=1.0, position_bias=0.3)
    assert near(shares(judge, "noise", "oracle")[Winner.A], 0.3)  # the worse answer wins when shown first
    assert near(shares(judge, "big", "big")[Winner.A], 0.3)
    both = SimulatedJudge(CLASSES, accuracy=1.0, position_bias=0.3, orders=2)
    got = shares(both, "noise", "oracle")
    assert got[Winner.A] == 0  # A wins only if both orders agree, and the swapped order favours B's position
    assert near(got[Winner.TIE], 0.3) and near(got[Winner.B], 0.7)


def test_equal_classes_tie_or_split_evenly() -> None:
    assert shares(SimulatedJudge(CLASSES), "big", "big")[Winner.TIE] == 1.0
    assert shares(SimulatedJudge(CLASSES, orders=2), "small", "small")[Winner.TIE] == 1.0
    split = shares(SimulatedJudge(CLASSES, equal_ties=False, accuracy=0.9), "big", "big")
    assert split[Winner.TIE] == 0 and near(split[Winner.A], 0.5)


def test_unknown_answers_count_as_average() -> None:
    judge = SimulatedJudge(CLASSES, accuracy=1.0)
    assert judge.p_a_better("plain text", answer("big", 0)) == pytest.approx(p_better(0.5, 0.57))
    assert judge.p_a_better("[q=unlisted] x", "no marker") == 0.5
    assert shares(judge, None, None)[Winner.TIE] == 1.0
    strict = SimulatedJudge(CLASSES, accuracy=1.0, unknown=0.0)
    assert shares(strict, None, "small")[Winner.B] == 1.0


def test_correct_and_wrong_markers_judge_without_classes() -> None:
    """p2pserve.sim.backend's markers: a correct answer beats a wrong one; alike ones tie."""
    judge = SimulatedJudge({}, accuracy=1.0)
    assert judge.decide("q", "[wrong] tok", "[correct] tok").winner is Winner.B
    assert judge.decide("q", "[correct] a", "[correct] b").winner is Winner.TIE
    assert near(shares(SimulatedJudge({}, accuracy=0.8), "correct", "wrong")[Winner.A], 0.8)
    assert SimulatedJudge({"wrong": 0.2}).classes == {"correct": 1.0, "wrong": 0.2}
