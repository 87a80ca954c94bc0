"""A node refuses peers of another network or genesis, and both sides say what differs:
statuses carry the genesis digest (a different one is not accepted), the first ledger pull
carries the whole network parameters (a responder holding others answers SyncMismatch)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from p2pserve.config import parse_config
from p2pserve.sim.cluster import open_cluster
from transports.memory import MemoryNetwork

HONEST = parse_config({"models": []})
HALF_CREDIT = parse_config({"models": [], "ledger_params": {"initial_credit": 500}})
OTHER_NET = parse_config({"models": [], "ledger_params": {"network_id": "othernet"}})


async def settle(seconds: float = 20) -> None:
    await trio.sleep(seconds)


@pytest.mark.parametrize(("stranger", "said"), [
    (HALF_CREDIT, "with another genesis: initial_credit 1,000 (ours 500)"),
    (OTHER_NET, "is on network 'devnet', we are on 'othernet'"),
])
async def test_a_stranger_is_refused_and_both_sides_say_why(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, stranger: object, said: str
) -> None:
    caplog.set_level(logging.WARNING, logger="p2pserve.ledger.sync")
    async with open_cluster([HONEST, HONEST, stranger], network=MemoryNetwork(seed=8, default_latency=0.01), seed=8) as c:  # type: ignore[list-item]
        await settle()
        a, b, s = c[0], c[1], c[2]
        assert b.peer_id in a.peers and a.peer_id in b.peers  # honest nodes see each other
        assert s.peer_id not in a.peers and s.peer_id not in b.peers  # nobody lists the stranger
        assert len(s.peers) == 0  # nor it them
        assert a.ledger.store.state.account(s.peer_id) is None  # its open block is not ours to keep
    lines = [r.getMessage() for r in caplog.records if r.name == "p2pserve.ledger.sync"]
    stranger_side = [m for m in lines if said in m]
    honest_side = [m for m in lines if s.peer_id in m]
    assert stranger_side, lines
    assert honest_side, lines
    assert len(lines) <= 6, lines  # once per peer, not per round


def test_differences_name_the_field_in_credits() -> None:
    ours = HONEST.ledger_params.network_params()
    theirs = HALF_CREDIT.ledger_params.network_params()
    assert ours.differences(theirs) == ["initial_credit 500 (ours 1,000)"]
    assert ours.differences(ours) == [] and ours.digest() != theirs.digest() and len(ours.digest()) == 16
