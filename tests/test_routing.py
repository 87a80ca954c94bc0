"""PoS candidate choice: frequencies match stake, no duplicates, newcomers get their share."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from p2pserve.routing import choose_candidates, pos_order
from tests.serve_harness import make_entry, signer

DRAWS = 20_000


def _chi_square(observed: dict[str, int], expected: dict[str, float]) -> float:
    return sum((observed.get(k, 0) - e) ** 2 / e for k, e in expected.items())


def test_first_pick_frequencies_match_stake_ratios() -> None:
    stakes = [1, 2, 3, 4, 10]
    entries = [make_entry(signer(i), s * 1_000_000) for i, s in enumerate(stakes)]
    rng = random.Random(1234)
    counts = Counter(choose_candidates(entries, rng, 1, newcomer_share=0.0)[0] for _ in range(DRAWS))
    total = sum(stakes)
    expected = {e.peer_id: DRAWS * s / total for e, s in zip(entries, stakes)}
    # 4 degrees of freedom: the 99.9% quantile of chi-square(4) is 18.47
    assert _chi_square(counts, expected) < 18.47
    for e, s in zip(entries, stakes):
        assert abs(counts[e.peer_id] / DRAWS - s / total) < 0.015


def test_second_pick_follows_sampling_without_replacement() -> None:
    # stakes 1:3: P(second = light) = P(first = heavy) = 0.75
    light, heavy = make_entry(signer(1), 1), make_entry(signer(2), 3)
    rng = random.Random(7)
    seconds = Counter(choose_candidates([light, heavy], rng, 2, 0.0)[1] for _ in range(DRAWS))
    assert abs(seconds[light.peer_id] / DRAWS - 0.75) < 0.015


def test_no_duplicates_and_k_bounds() -> None:
    entries = [make_entry(signer(i), (i % 3) * 5) for i in range(10)]
    rng = random.Random(3)
    for k in range(0, 13):
        out = choose_candidates(entries, rng, k, 0.05)
        assert len(out) == min(k, 10)
        assert len(set(out)) == len(out)
    assert sorted(pos_order(entries, rng, 0.5)) == sorted(e.peer_id for e in entries)


def test_staked_peers_come_before_zero_stake_fallbacks() -> None:
    staked = [make_entry(signer(i), 5) for i in range(3)]
    zero = [make_entry(signer(10 + i), 0) for i in range(3)]
    rng = random.Random(5)
    for _ in range(200):
        order = pos_order(staked + zero, rng, newcomer_share=0.0)
        assert set(order[:3]) == {e.peer_id for e in staked}


def test_newcomer_share_goes_uniformly_to_zero_stake_peers() -> None:
    staked = [make_entry(signer(i), 10) for i in range(3)]
    zero = [make_entry(signer(10 + i), 0) for i in range(2)]
    rng = random.Random(11)
    firsts = Counter(choose_candidates(staked + zero, rng, 1, newcomer_share=0.2)[0] for _ in range(DRAWS))
    zero_ids = {e.peer_id for e in zero}
    newcomer = sum(c for pid, c in firsts.items() if pid in zero_ids)
    assert abs(newcomer / DRAWS - 0.2) < 0.015
    a, b = (firsts[e.peer_id] for e in zero)
    assert abs(a - b) / newcomer < 0.08


def test_nobody_staked_is_uniform() -> None:
    entries = [make_entry(signer(i), 0) for i in range(4)]
    rng = random.Random(2)
    firsts = Counter(choose_candidates(entries, rng, 1, 0.05)[0] for _ in range(DRAWS))
    for e in entries:
        assert abs(firsts[e.peer_id] / DRAWS - 0.25) < 0.015


def test_deterministic_for_a_seed() -> None:
    entries = [make_entry(signer(i), i) for i in range(8)]
    a = [choose_candidates(entries, random.Random(99), 3, 0.3) for _ in range(5)]
    assert all(x == a[0] for x in a)
    rng1, rng2 = random.Random(42), random.Random(42)
    assert [pos_order(entries, rng1, 0.1) for _ in range(50)] == [pos_order(entries, rng2, 0.1) for _ in range(50)]


def test_stake_lookup_overrides_claimed_stake() -> None:
    a, b = make_entry(signer(1), 1_000_000), make_entry(signer(2), 1)
    ledger = {a.peer_id: 0, b.peer_id: 50}
    rng = random.Random(0)
    firsts = Counter(choose_candidates([a, b], rng, 1, 0.0, stake_of=lambda e: ledger[e.peer_id])[0] for _ in range(500))
    assert firsts == Counter({b.peer_id: 500})


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        choose_candidates([], random.Random(), -1, 0.0)
    with pytest.raises(ValueError):
        pos_order([], random.Random(), 1.5)
    assert choose_candidates([], random.Random(), 3, 0.05) == []
