"""The judge draw: exact, stake-weighted, without replacement, parties never drawn."""

from __future__ import annotations

from collections import Counter

from p2pserve.crypto import sha256
from p2pserve.duel.draw import draw_judges

CANDIDATES = [("j1", 100), ("j2", 300), ("j3", 600)]


def test_the_same_order_draws_the_same_judges_whatever_the_listing_order() -> None:
    h = sha256(b"order")
    assert draw_judges(h, CANDIDATES, 2) == draw_judges(h, list(reversed(CANDIDATES)), 2)


def test_draws_follow_stake() -> None:
    counts = Counter(draw_judges(sha256(i.to_bytes(4, "big")), CANDIDATES, 1)[0] for i in range(6000))
    assert abs(counts["j1"] / 6000 - 0.1) < 0.02
    assert abs(counts["j2"] / 6000 - 0.3) < 0.03
    assert abs(counts["j3"] / 6000 - 0.6) < 0.03


def test_without_replacement_and_parties_excluded() -> None:
    for i in range(200):
        h = sha256(bytes([i]))
        judges = draw_judges(h, CANDIDATES + [("req", 10**9), ("ex", 10**9)], 3, exclude=("req", "ex"))
        assert sorted(judges) == ["j1", "j2", "j3"]


def test_zero_stake_is_never_drawn_and_k_is_capped() -> None:
    assert draw_judges(sha256(b"x"), [("a", 0), ("b", 5)], 3) == ["b"]
    assert draw_judges(sha256(b"x"), [], 1) == []
