"""Test and simulator helpers: deterministic actors that write valid ledger histories.

Ships with the product (like the memory transport) so tests, benchmarks and the simulator
build histories the same way. Pure: keys and request IDs come from the ``random.Random``
passed in; time is a counter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from p2pserve.crypto import Signer
from p2pserve.ledger import rules
from p2pserve.ledger.blocks import (
    Block,
    Body,
    ClaimBody,
    NetworkParams,
    OpenBody,
    PayBody,
    StakeBody,
    UnstakeBody,
)
from p2pserve.ledger.rules import LedgerState
from p2pserve.units import MICRO
from p2pserve.wire.infer import Receipt

__all__ = ["CREDIT", "TEST_PARAMS", "World", "make_receipt"]

CREDIT = MICRO
TEST_PARAMS = NetworkParams(
    network_id="testnet",
    initial_credit=1_000 * CREDIT,
    max_initial_staked=100 * CREDIT,
    unbonding_delay_ms=60_000,
    duel_penalty=2 * CREDIT,
    max_clock_skew_ms=5_000,
)


def make_receipt(
    rng: random.Random,
    network_id: str,
    requester: str,
    executor: Signer,
    price: int,
    *,
    request_id: bytes | None = None,
    timestamp_ms: int = 0,
) -> Receipt:
    """A receipt signed by ``executor`` for work done for ``requester``."""
    return Receipt(
        request_id if request_id is not None else rng.randbytes(16),
        network_id,
        requester,
        executor.peer_id,
        "test-model",
        rng.randbytes(32),
        rng.randbytes(32),
        10,
        20,
        price,
        False,
        timestamp_ms,
        b"",
    ).signed(executor)


@dataclass
class World:
    """Named signers plus a ledger state; each helper writes one valid block and applies it."""

    rng: random.Random
    params: NetworkParams = TEST_PARAMS
    now_ms: int = 1_000_000
    signers: dict[str, Signer] = field(default_factory=dict)
    state: LedgerState = field(init=False)
    log: list[Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = LedgerState.genesis(self.params)

    def signer(self, name: str) -> Signer:
        if name not in self.signers:
            self.signers[name] = Signer(self.rng.randbytes(32))
        return self.signers[name]

    def id(self, name: str) -> str:
        return self.signer(name).peer_id

    def block(self, name: str, body: Body, *, dt_ms: int = 1) -> Block:
        """A valid-looking next block of ``name`` (not applied)."""
        self.now_ms += dt_ms
        return rules.next_block(self.signer(name), self.state, body, self.now_ms)

    def add(self, block: Block) -> Block:
        self.state = rules.apply(block, self.state)
        self.log.append(block)
        return block

    def open(self, name: str, staked: int = 0) -> Block:
        return self.add(self.block(name, OpenBody(staked)))

    def stake(self, name: str, amount: int) -> Block:
        return self.add(self.block(name, StakeBody(amount)))

    def unstake(self, name: str, amount: int) -> Block:
        return self.add(self.block(name, UnstakeBody(amount)))

    def receipt(self, requester: str, executor: str, price: int, **kw: bytes) -> Receipt:
        return make_receipt(self.rng, self.params.network_id, self.id(requester), self.signer(executor), price, **kw)  # type: ignore[arg-type]

    def pay(self, requester: str, executor: str, price: int) -> Block:
        """A pay block settling one receipt of ``price``."""
        return self.pay_many(requester, executor, [price])

    def pay_body(self, requester: str, executor: str, prices: list[int]) -> PayBody:
        """A pay body with one fresh receipt of ``executor`` per price."""
        return PayBody(tuple(self.receipt(requester, executor, p) for p in prices))

    def pay_many(self, requester: str, executor: str, prices: list[int]) -> Block:
        """A pay block settling one receipt per price, all from ``executor``."""
        return self.add(self.block(requester, self.pay_body(requester, executor, prices)))

    def claim_body(self, source: Block, amount: int) -> ClaimBody:
        return ClaimBody(source.account, source.height, source.digest(), amount)

    def claim(self, name: str, source: Block, amount: int) -> Block:
        return self.add(self.block(name, self.claim_body(source, amount)))

    def random_step(self, names: list[str]) -> Block | None:
        """One random valid block among opened ``names`` (None if the draw had nothing to do)."""
        rng = self.rng
        a = rng.choice(names)
        view = self.state.account(self.id(a))
        assert view is not None
        r = rng.random()
        if r < 0.15:
            owed = self.state.unclaimed_for(self.id(a))
            if owed:
                c = rng.choice(owed)
                body = ClaimBody(c.source_account, c.source_height, c.source_hash, c.amount)
                return self.add(self.block(a, body))
            return None
        if r < 0.25:
            amount = rng.randrange(1, 5 * CREDIT)
            return self.stake(a, amount) if view.free_at(self.now_ms + 1) >= amount else None
        if r < 0.35:
            amount = rng.randrange(1, 3 * CREDIT)
            return self.unstake(a, amount) if view.staked >= amount else None
        if r < 0.4:
            self.now_ms += rng.randrange(0, 2 * (self.params.unbonding_delay_ms + self.params.max_clock_skew_ms))
            return None
        e = rng.choice([n for n in names if n != a])
        # mostly one receipt per pay, sometimes a batch (as a node's pay writer makes them)
        n = 1 if rng.random() < 0.5 else rng.randrange(2, 9)
        prices = [rng.randrange(1, 50 * CREDIT // n) for _ in range(n)]
        if view.free_at(self.now_ms + 1) < sum(prices):
            return None
        return self.pay_many(a, e, prices)
