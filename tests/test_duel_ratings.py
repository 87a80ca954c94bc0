"""Bradley-Terry ratings from verdicts: deterministic, order-free, sensible."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserve.duel.ratings import bradley_terry


def test_no_verdicts_no_ratings() -> None:
    assert bradley_terry([]) == {}


def test_the_winner_rates_above_the_loser_and_counts_are_kept() -> None:
    r = bradley_terry([("good", "bad", "A")] * 8 + [("bad", "good", "B")] * 2 + [("good", "bad", "tie")])
    assert r["good"].rating > 1000 > r["bad"].rating
    assert (r["good"].wins, r["good"].losses, r["good"].ties) == (10, 0, 1)
    assert (r["bad"].wins, r["bad"].losses, r["bad"].ties) == (0, 10, 1)
    for x in r.values():
        assert x.low < x.rating < x.high


def test_balanced_results_rate_everyone_at_the_anchor() -> None:
    r = bradley_terry([("a", "b", "A"), ("a", "b", "B"), ("b", "c", "tie"), ("a", "c", "tie")])
    assert {x.rating for x in r.values()} == {1000.0}


def test_more_duels_narrow_the_interval() -> None:
    few = bradley_terry([("a", "b", "A"), ("a", "b", "B")])
    many = bradley_terry([("a", "b", "A"), ("a", "b", "B")] * 50)
    assert many["a"].high - many["a"].low < (few["a"].high - few["a"].low) / 3


def test_a_clear_ranking_is_recovered() -> None:
    rng = random.Random(5)
    strength = {"p0": 3.0, "p1": 2.0, "p2": 1.0, "p3": 0.5}
    outcomes = []
    names = sorted(strength)
    for _ in range(2000):
        a, b = rng.sample(names, 2)
        outcomes.append((a, b, "A" if rng.random() < strength[a] / (strength[a] + strength[b]) else "B"))
    r = bradley_terry(outcomes)
    assert sorted(names, key=lambda n: -r[n].rating) == names


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from("abcde"), st.sampled_from(["A", "B", "tie"]))
                .filter(lambda t: t[0] != t[1]), max_size=40), st.randoms())
def test_the_order_of_verdicts_does_not_matter(outcomes: list[tuple[str, str, str]], rnd: random.Random) -> None:
    shuffled = list(outcomes)
    rnd.shuffle(shuffled)
    assert bradley_terry(outcomes) == bradley_terry(shuffled)


def test_bad_outcomes_are_refused() -> None:
    with pytest.raises(ValueError):
        bradley_terry([("a", "a", "A")])
    with pytest.raises(ValueError):
        bradley_terry([("a", "b", "C")])
