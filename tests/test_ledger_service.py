"""The ledger service pays off the request's path: ``pay`` only queues (reserving the
credit), the writer settles the queue in one block per executor every ``pay_interval`` or
as soon as one executor's queue is full, the executor claims each pay block once and
promptly; a clean stop pays what is queued; receipts queued when the node is killed are
paid after restart (unpaid log); unaffordable receipts wait in order. Memory transport,
virtual time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from p2pserve.clock import virtual_clock
from p2pserve.crypto import Signer
from p2pserve.ledger.blocks import Block, ClaimBody, Kind, PayBody
from p2pserve.ledger.rules import fingerprint, invariant_violations
from p2pserve.ledger.service import LedgerService
from p2pserve.ledger.store import LedgerStore
from p2pserve.ledger.unpaid import UNPAID_NAME, UnpaidLog
from p2pserve.testing.ledger import CREDIT, TEST_PARAMS, make_receipt
from p2pserve.wire.infer import Receipt
from transports.memory import MemoryNetwork

RNG = random.Random(5)


CLOCK = virtual_clock(1_700_000_000)


def signer(name: str) -> Signer:
    return Signer(name.encode().ljust(32, b"\0"))


@asynccontextmanager
async def services(
    net: MemoryNetwork, stores: list[LedgerStore], names: list[str], **kw: float
) -> AsyncIterator[list[LedgerService]]:
    """Connected services, accounts opened, run until the block exits (then stopped)."""
    async with trio.open_nursery() as nursery:
        out: list[LedgerService] = []
        transports = []
        for name, store in zip(names, stores):
            t = await nursery.start(_transport, net, signer(name))
            transports.append(t)
            out.append(LedgerService(t, signer(name), store, clock=CLOCK, open_delay=0.1, **kw))  # type: ignore[arg-type]
        for t in transports[1:]:
            await t.connect(transports[0].listen_addrs()[0])
        for s in out:
            await nursery.start(s.run)
        while not all(s.store.state.account(x.account) for s in out for x in out):
            await trio.sleep(0.05)
        yield out
        nursery.cancel_scope.cancel()


async def _transport(net: MemoryNetwork, s: Signer, *, task_status: trio.TaskStatus[object]) -> None:
    async with net.open_transport(s) as t:
        task_status.started(t)
        await trio.sleep_forever()


def receipt(requester: LedgerService, executor: str, price: int) -> Receipt:
    return make_receipt(RNG, TEST_PARAMS.network_id, requester.account, signer(executor), price)


def blocks_of(store: LedgerStore, account: str, kind: Kind) -> list[Block]:
    return [b for b in store.blocks_after(account, -1, 10_000) if b.kind == kind]


async def test_pay_queues_then_one_block_per_executor_claimed_once(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=1, default_latency=0.005)
    stores = [LedgerStore(":memory:", TEST_PARAMS) for _ in range(3)]
    async with services(net, stores, ["gw", "b", "c"], claim_interval=30.0) as (gw, b, c):
        free = gw.free()
        height = gw.store.state.account(gw.account).height  # type: ignore[union-attr]
        for i in range(5):
            await gw.pay(receipt(gw, "b", CREDIT))
        await gw.pay(receipt(gw, "c", 2 * CREDIT))
        await gw.pay(receipt(gw, "b", 0))  # nothing owed for a free receipt
        # nothing written yet: the credit is reserved, not spent
        assert gw.store.state.account(gw.account).height == height  # type: ignore[union-attr]
        assert (gw.queued(), gw.reserved, gw.paid) == (6, 7 * CREDIT, 0)
        assert gw.available() == free - 7 * CREDIT
        assert gw.can_afford(free - 7 * CREDIT) and not gw.can_afford(free - 7 * CREDIT + 1)
        await trio.sleep(gw.pay_interval + 0.05)
        assert (gw.queued(), gw.reserved, gw.paid) == (0, 0, 6)
        pays = blocks_of(gw.store, gw.account, Kind.PAY)
        bodies = [p.decoded_body() for p in pays]
        assert sorted(len(x.receipts) for x in bodies if isinstance(x, PayBody)) == [1, 5]
        # executors claim promptly (claim_interval is 30 s), one claim per pay block
        await trio.sleep(0.5)
        for ex, n in ((b, 5), (c, 2)):
            claims = blocks_of(ex.store, ex.account, Kind.CLAIM)
            assert len(claims) == 1 and ex.claimed == 1
            body = claims[0].decoded_body()
            assert isinstance(body, ClaimBody) and body.amount == n * CREDIT
        await trio.sleep(1)
        assert len({fingerprint(s.state) for s in stores}) == 1
        assert invariant_violations(gw.store.state) == []
        # paying the same receipt again is ignored
        r = pays[0].decoded_body().receipts[0]  # type: ignore[union-attr]
        await gw.pay(r)
        assert gw.queued() == 0


async def test_a_full_queue_flushes_at_once_and_blocks_respect_the_limit(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=2, default_latency=0.005)
    stores = [LedgerStore(":memory:", TEST_PARAMS) for _ in range(2)]
    async with services(net, stores, ["gw", "b"], pay_interval=60.0, max_receipts_per_pay=4) as (gw, b):
        await trio.sleep(0.1)
        for _ in range(4):
            await gw.pay(receipt(gw, "b", 1))
        await trio.sleep(0.01)  # the writer wakes at the 4th receipt, long before pay_interval
        assert gw.paid == 4 and gw.queued() == 0
        for _ in range(3):
            await gw.pay(receipt(gw, "b", 1))
        await trio.sleep(1)
        assert gw.paid == 4 and gw.queued() == 3
        for _ in range(8):  # 11 queued: the writer pays everything queued, 4 receipts a block
            await gw.pay(receipt(gw, "b", 1))
        await trio.sleep(0.01)
        assert gw.paid == 15 and gw.queued() == 0
        assert await gw.flush() == 0
        sizes = [len(p.decoded_body().receipts) for p in blocks_of(gw.store, gw.account, Kind.PAY)]  # type: ignore[union-attr]
        assert sizes == [4, 4, 4, 3]
        await trio.sleep(1.5)
        assert len(blocks_of(b.store, b.account, Kind.CLAIM)) == 4 and not b.store.state.unclaimed_for(b.account)


async def test_a_receipt_the_payer_cannot_afford_is_refused_never_reserved(autojump_clock: trio.testing.MockClock) -> None:
    """Attack (issue 7, item 2): one receipt priced above the payer's whole balance was
    queued and reserved forever (even across restarts through unpaid.log), so ``can_afford``
    stayed false and every later request got 503. Now such a receipt is refused outright:
    nothing is reserved, the receipts around it are paid, and offloading stays possible; a
    receipt above the hold taken for its request is refused the same way."""
    net = MemoryNetwork(seed=3, default_latency=0.005)
    stores = [LedgerStore(":memory:", TEST_PARAMS) for _ in range(2)]
    async with services(net, stores, ["gw", "b"], pay_interval=60.0) as (gw, b):
        free = gw.free()
        first, big, last = receipt(gw, "b", CREDIT), receipt(gw, "b", free), receipt(gw, "b", CREDIT)
        assert await gw.pay(first) and not await gw.pay(big) and await gw.pay(last)
        assert gw.queued() == 2 and gw.reserved == 2 * CREDIT and gw.unpaid == 1
        assert gw.can_afford(free - 2 * CREDIT) and not gw.can_afford(free - 2 * CREDIT + 1)
        assert await gw.flush() == 2 and gw.reserved == 0
        # through a hold: the worst case is set aside before the offer; the receipt may not exceed it
        hold = gw.hold(5 * CREDIT)
        assert hold is not None and gw.available() == gw.free() - 5 * CREDIT
        assert gw.hold(gw.available() + 1) is None  # concurrent offloads cannot over-commit
        assert not hold.pay(receipt(gw, "b", 5 * CREDIT + 1)) and gw.unpaid == 2
        assert gw.available() == gw.free()  # the hold is released even when its receipt is refused
        hold2 = gw.hold(5 * CREDIT)
        assert hold2 is not None and hold2.pay(receipt(gw, "b", 3 * CREDIT))
        assert gw.reserved == 3 * CREDIT and gw.available() == gw.free() - 3 * CREDIT
        hold2.release()  # releasing after paying changes nothing
        assert gw.available() == gw.free() - 3 * CREDIT


async def test_an_oversized_receipt_in_the_unpaid_log_is_dropped_at_start(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Attack (issue 7, item 2, after a restart): a receipt the payer can never afford, left
    in unpaid.log, must not be reserved again at every start."""
    net = MemoryNetwork(seed=6, default_latency=0.005)
    paths = [tmp_path / n / "ledger.sqlite3" for n in ("gw", "b")]
    gw_id = signer("gw").peer_id
    log = UnpaidLog(paths[0].with_name(UNPAID_NAME))
    paths[0].parent.mkdir(parents=True)
    log.open()
    huge = make_receipt(RNG, TEST_PARAMS.network_id, gw_id, signer("b"), 10 * TEST_PARAMS.initial_credit)
    fine = make_receipt(RNG, TEST_PARAMS.network_id, gw_id, signer("b"), CREDIT)
    log.append(huge)
    log.append(fine)
    log.close()
    stores = [LedgerStore(p, TEST_PARAMS) for p in paths]
    async with services(net, stores, ["gw", "b"], pay_interval=0.25) as (gw, b):
        await trio.sleep(0.5)
        assert gw.paid == 1 and gw.queued() == 0 and gw.reserved == 0 and gw.unpaid == 1
        assert gw.can_afford(gw.free())
    for s_ in stores:
        s_.close()


async def test_clean_stop_pays_what_is_queued(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(seed=4, default_latency=0.005)
    stores = [LedgerStore(":memory:", TEST_PARAMS) for _ in range(2)]
    async with services(net, stores, ["gw", "b"], pay_interval=60.0) as (gw, b):
        await gw.pay(receipt(gw, "b", CREDIT))
        await gw.pay(receipt(gw, "b", CREDIT))
        assert gw.paid == 0
    assert gw.paid == 2 and gw.queued() == 0
    assert len(blocks_of(stores[0], gw.account, Kind.PAY)) == 1


async def test_receipts_queued_when_killed_are_paid_after_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    net = MemoryNetwork(seed=5, default_latency=0.005)
    paths = [tmp_path / n / "ledger.sqlite3" for n in ("gw", "b")]
    stores = [LedgerStore(p, TEST_PARAMS) for p in paths]
    async with services(net, stores, ["gw", "b"], pay_interval=60.0) as (gw, b):
        owed = [receipt(gw, "b", CREDIT) for _ in range(3)]
        for r in owed:
            await gw.pay(r)
        await trio.sleep(0.01)
        # SIGKILL: no shutdown flush (the log stays as written; the queue is forgotten)
        gw.queue._queue.clear()
        gw.queue._keys.clear()
    assert gw.paid == 0
    assert UnpaidLog(paths[0].with_name(UNPAID_NAME)).load() == owed
    for s in stores:
        s.close()
    stores = [LedgerStore(p, TEST_PARAMS) for p in paths]
    async with services(net, stores, ["gw", "b"], pay_interval=0.25) as (gw2, b2):
        await trio.sleep(0.5)
        assert gw2.paid == 3
        (pay,) = blocks_of(gw2.store, gw2.account, Kind.PAY)
        assert list(pay.decoded_body().receipts) == owed  # type: ignore[union-attr]
    assert UnpaidLog(paths[0].with_name(UNPAID_NAME)).load() == []
    for s in stores:
        s.close()


def test_unpaid_log_tolerates_a_torn_tail_and_skips_paid(tmp_path: Path) -> None:
    gw = Signer(b"g" * 32)
    rs = [make_receipt(RNG, TEST_PARAMS.network_id, gw.peer_id, signer("b"), 5) for _ in range(3)]
    log = UnpaidLog(tmp_path / UNPAID_NAME)
    assert log.open() == []
    for r in rs:
        log.append(r)
    log.close()
    path = tmp_path / UNPAID_NAME
    path.write_bytes(path.read_bytes()[:-7])  # killed in the middle of the last write
    log = UnpaidLog(path)
    assert log.open() == rs[:2]
    log.rewrite(rs[1:2])
    log.append(rs[2])
    assert log.load() == rs[1:]
    log.rewrite([])
    assert log.load() == [] and path.stat().st_size == 0
    log.close()
    log.close()
