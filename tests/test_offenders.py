"""The offender book: strikes, doubling cooling-off, probation behind clean peers, forgiveness
through good service, bounded memory."""

from __future__ import annotations

import pytest

from p2pserve.serving.offenders import Offence, OffenderBook


def test_cooling_off_doubles_and_is_capped() -> None:
    book = OffenderBook(base_cooldown_s=30, max_cooldown_s=100)
    assert book.offence("p", Offence.STALL, now=0) == 30
    assert book.cooling("p", 29.9) and not book.cooling("p", 30)
    assert book.offence("p", Offence.STALL, now=40) == 60
    assert book.offence("p", Offence.BROKEN, now=41) == 100  # capped
    assert book.cooling("p", 140) and not book.cooling("p", 141)


def test_probation_puts_offenders_behind_every_clean_peer() -> None:
    book = OffenderBook()
    book.offence("rich", Offence.NO_REPLY, now=0)
    assert book.split(["a", "rich", "b"], now=1) == (["a", "b"], [])  # cooling: not offered at all
    assert book.split(["a", "rich", "b"], now=31) == (["a", "b"], ["rich"])  # then after the clean ones
    assert book.on_probation("rich") and not book.on_probation("a")


def test_good_service_forgives_and_repeats_are_remembered() -> None:
    book = OffenderBook(forgive=0.5)
    book.offence("p", Offence.BAD_RECEIPT, now=0)
    book.served("p")
    assert book.strikes("p") == 0.5
    book.offence("p", Offence.BAD_RECEIPT, now=100)  # a repeat: the cooling-off grows
    assert book.strikes("p") == 1.5
    book.served("p")
    book.served("p")
    book.served("p")
    assert not book.on_probation("p") and book.strikes("p") == 0
    book.served("never-offended")  # nothing to forgive
    assert len(book) == 0


def test_snapshot_and_bounded_memory() -> None:
    book = OffenderBook(max_entries=2)
    book.offence("a", Offence.STALL, now=0)
    book.offence("a", Offence.STALL, now=0)
    book.offence("b", Offence.PROTOCOL, now=0)
    book.offence("c", Offence.NO_REPLY, now=0)  # evicts the least struck (b)
    assert len(book) == 2 and not book.on_probation("b")
    rows = book.snapshot(now=10)
    assert [r["peer_id"] for r in rows] == ["a", "c"] and rows[0]["last"] == "stall" and rows[0]["strikes"] == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        OffenderBook(base_cooldown_s=0)
    with pytest.raises(ValueError):
        OffenderBook(base_cooldown_s=10, max_cooldown_s=5)


def test_probation_ends_with_time_so_an_offender_behind_clean_peers_is_not_starved() -> None:
    """A peer on probation behind enough clean candidates is never offered work, so it could
    never earn forgiveness by serving: one slow start (an executor loading its model) would
    keep an honest peer out for good (seen in test_duel_embedded: one of three executors was
    never dueled in 60 requests). Probation ends after probation_factor x its cooling-off;
    the strike stays, so a repeat cools it off longer."""
    book = OffenderBook(base_cooldown_s=30, probation_factor=4)
    book.offence("slow", Offence.STALL, now=0)
    assert book.split(["a", "slow"], now=31) == (["a"], ["slow"])
    assert book.on_probation("slow", now=149)
    assert book.split(["a", "slow"], now=150) == (["a", "slow"], [])  # 30 s cooling + 120 s probation
    assert not book.on_probation("slow", now=150) and book.strikes("slow") == 1
    assert book.offence("slow", Offence.STALL, now=200) == 60  # remembered: the repeat doubles
