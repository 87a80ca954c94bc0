"""Market integrity: each attack of the market-integrity issue, reproduced on real nodes (the
code `p2pserve join` runs) over the memory transport in virtual time. Each test passes only
when the attack is refused; its docstring names the attack. Item 9 (cross-site requests)
is in tests/test_api_guard.py; items 3 and 4 also have rule-level tests in
tests/test_ledger_rules.py, item 2 a service-level one in tests/test_ledger_service.py."""

from __future__ import annotations

import dataclasses
import random
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, TextDelta
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import NodeConfig, parse_config
from p2pserve.crypto import Signer, sha256
from p2pserve.errors import ConfigError, NoCapacity, StoreError
from p2pserve.ledger import audit, rules
from p2pserve.ledger.blocks import ZERO_HASH, EquivocationProof, OpenBody, PayBody, StakeBody, VerdictBody, make_block
from p2pserve.ledger.state import fingerprint
from p2pserve.ledger.store import LedgerStore
from p2pserve.net.framed import FramedStream
from p2pserve.node import Node
from p2pserve.serving.service import Completed
from p2pserve.sim.cluster import Cluster, open_cluster
from p2pserve.testing.ledger import make_receipt
from p2pserve.testing.stream_helpers import until as wait_until_true
from p2pserve.wire.duel import DuelOrder, JudgeCandidate
from p2pserve.wire.infer import INFER_PROTOCOL, InferRequest, Receipt, Reject, RequestHeader
from p2pserve.wire.sync import blocks_topic
from tests.serve_harness import Hang, ScriptedBackend
from transports.memory import MemoryNetwork

MODEL = "fake-model"
MICRO = 1_000_000


def cfg(*, models: bool = True, ledger: dict[str, Any] | None = None, **server: Any) -> NodeConfig:
    raw: dict[str, Any] = {"server_params": {"accept_frequency": 1.0, **server}, "ledger_params": ledger or {}}
    raw["models"] = [{"model_path": MODEL, "backend": "fake", "dispatch_params": {"max_concurrency": 8}}] if models else []
    return parse_config(raw)


def fake() -> dict[str, Backend]:
    return {MODEL: build_backend(BackendSpec(MODEL, kind="fake"))}


async def until(pred: Callable[[], bool], timeout: float = 120.0) -> None:
    await wait_until_true(pred, timeout)


async def ask(node: Node, **extra: Any) -> Completed:
    done = None
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **extra}
    async with node.serve.submit("chat", MODEL, body) as events:
        async for ev in events:
            if isinstance(ev, Completed):
                done = ev
    assert done is not None
    return done


def opened(c: Cluster) -> Callable[[], bool]:
    return lambda: all(n.ledger.store.state.account(m.peer_id) is not None for n in c.alive() for m in c.alive())


def same_fingerprint(nodes: list[Node]) -> Callable[[], bool]:
    return lambda: len({fingerprint(n.ledger.store.state) for n in nodes}) == 1


class InflatingBackend(Backend):
    """Answers five words and reports 990000 completion tokens in its usage."""

    model = MODEL
    context_length = 8192
    max_concurrency = 4

    async def generate(self, kind: Kind, body: dict[str, Any], *, continuation: str = "") -> AsyncIterator[GenerationEvent]:
        yield TextDelta("one two three four five")
        yield Finished("stop", prompt_tokens=10, completion_tokens=990_000)

    async def load(self) -> Load:
        return Load(source="inflight")


def hostile_receipts(node: Node, completion_tokens: int) -> None:
    """Make ``node`` an executor that signs whatever token count it likes (no clamping)."""
    ex = node.serve._executor
    honest = ex._receipt

    def inflated(job: Any, text: str, prompt_tokens: int, _: int, partial: bool) -> Receipt:
        r = honest(dataclasses.replace(job, bounds=dataclasses.replace(job.bounds, max_tokens=None, context_length=10**9,
                                                                          stop_bytes=10**9)),
                   text, prompt_tokens, completion_tokens, partial)
        return r

    ex._receipt = inflated  # type: ignore[method-assign]


async def test_item1_an_executor_cannot_charge_what_it_likes(autojump_clock: trio.testing.MockClock) -> None:
    """Attack 1: an executor charges what it likes. An OpenAI-compatible backend answering
    five words with usage.completion_tokens = 990000 made the gateway pay 990 of its 1000
    credits. Now an honest node clamps its backend's usage to the bounds the requester can
    check (one token per byte of text + 16), and a hostile executor that signs the inflated
    count anyway gets its receipt refused (never paid) and a strike."""
    async with open_cluster([cfg(models=False), cfg()], network=MemoryNetwork(seed=11), seed=11,
                            backends=lambda i: {MODEL: InflatingBackend()} if i == 1 else {}) as c:
        gw, ex = c[0], c[1]
        await until(lambda: opened(c)() and bool(gw.peers.candidates(MODEL)) and gw.ledger.writable)
        free = gw.ledger.free()
        done = await ask(gw, max_tokens=None)
        assert done.receipt is not None and done.receipt.completion_tokens <= len(b"one two three four five") + 16
        await gw.ledger.flush()
        assert free - gw.ledger.free() == done.receipt.price <= 39_000  # 39 tokens at 1 credit / 1k
        # the same backend behind an executor that signs whatever it likes
        hostile_receipts(ex, 990_000)
        before = gw.ledger.free()
        done = await ask(gw, max_tokens=None)
        assert done.receipt is None and gw.serve.counters.bad_receipts == 1
        await gw.ledger.flush()
        assert gw.ledger.free() == before and gw.ledger.queued() == 0
        assert gw.serve.offenders.strikes(ex.peer_id) >= 1


async def test_item2_one_oversized_receipt_does_not_disable_a_gateway(autojump_clock: trio.testing.MockClock) -> None:
    """Attack 2: one receipt priced above the payer's whole balance was queued and reserved
    forever, so every later request got 503 after 30 s with an honest executor online.
    Now it is refused (never queued or reserved), the offender cools off, and the next
    request is answered by the honest executor at once."""
    configs = [cfg(models=False), cfg(ledger={"initial_staked": 100}), cfg(ledger={"initial_staked": 1})]
    async with open_cluster(configs, network=MemoryNetwork(seed=12), seed=12,
                            backends=lambda i: fake() if i else {}) as c:
        gw, hostile, honest = c[0], c[1], c[2]
        await until(lambda: opened(c)() and len(gw.peers.candidates(MODEL)) == 2 and gw.ledger.writable
                    and gw.ledger.stake_of(hostile.peer_id) > 0)
        hostile_receipts(hostile, 10**9)  # a price far above the gateway's 1000 credits
        served_by = []
        for _ in range(6):
            t0 = trio.current_time()
            done = await ask(gw)
            served_by.append(done.executor)
            assert trio.current_time() - t0 < 5
            queued = list(gw.ledger.queue.receipts())
            assert all(r.executor == honest.peer_id for r in queued)  # nothing of the hostile one is reserved
            assert gw.ledger.reserved == sum(r.price for r in queued)
        assert hostile.peer_id in served_by  # it was drawn (most stake) and its receipt refused
        assert served_by[-1] == honest.peer_id
        assert gw.serve.counters.bad_receipts == 1 and gw.serve.counters.failures == 0
        await gw.ledger.flush()
        assert gw.ledger.queued() == 0 and gw.ledger.reserved == 0
        assert gw.ledger.can_afford(gw.ledger.free())


async def test_item3_forged_verdicts_slash_nobody(autojump_clock: trio.testing.MockClock) -> None:
    """Attack 3: anyone could slash any staked account. A loser receipt copied from a public
    pay block plus a self-signed "winner" receipt with the same request ID, repeated with
    fresh order IDs, took a victim's stake from 10 to 0 on every node. Now a verdict needs
    the requester's signed duel order over both executors' receipts for one prompt and a
    judge that order draws: the forged verdicts (whoever signs the order) are refused
    everywhere and the victim keeps its stake (tests/test_ledger_verdicts.py: each reason)."""
    configs = [cfg(models=False), cfg(ledger={"initial_staked": 10}), cfg(models=False)]
    async with open_cluster(configs, network=MemoryNetwork(seed=13), seed=13,
                            backends=lambda i: fake() if i == 1 else {}) as c:
        gw, victim, attacker = c[0], c[1], c[2]
        await until(lambda: opened(c)() and bool(gw.peers.candidates(MODEL)) and gw.ledger.writable)
        await ask(gw)
        await gw.ledger.flush()
        await until(lambda: any(isinstance(b.decoded_body(), PayBody) for b in attacker.ledger.store.blocks_after(gw.peer_id, -1, 100)))
        pay = next(b for b in attacker.ledger.store.blocks_after(gw.peer_id, -1, 100) if isinstance(b.decoded_body(), PayBody))
        body = pay.decoded_body()
        assert isinstance(body, PayBody)
        loser_receipt = body.receipts[0]  # the victim's own receipt, public in the gateway's pay
        winner_receipt = dataclasses.replace(loser_receipt, executor=attacker.peer_id, signature=b"").signed(attacker.signer)
        stake = victim.ledger.stake_of(victim.peer_id)
        network = attacker.ledger.store.params.network_id
        for i in range(10):
            requester = (gw if i % 2 else attacker).peer_id  # claim the gateway ordered it, or order it ourselves
            header = RequestHeader(bytes([i]) * 16, network, requester, victim.peer_id, MODEL, "chat", bytes(32), 0,
                                   sha256(b""), 0)
            order = DuelOrder(network, requester, (header, header), (winner_receipt, loser_receipt),
                              (JudgeCandidate(attacker.peer_id, 1),), 1, b"")
            order = dataclasses.replace(order, signature=attacker.signer.sign(order.signing_bytes()))
            verdict = VerdictBody(order, "A", "fake", (), (), attacker.ledger.store.params.duel_penalty)
            state = attacker.ledger.store.state
            block = rules.next_block(attacker.signer, state, verdict, attacker.ledger.now_ms())
            await attacker.transport.publish(blocks_topic(network, attacker.ledger.store.params.digest()), block.encode())
        await trio.sleep(10)
        for n in c.alive():
            assert n.ledger.store.state.stake_of(victim.peer_id) == stake
            assert n.ledger.store.state.verdict_count() == 0
        assert same_fingerprint(c.alive())()


async def test_item4_unbonding_cannot_be_skipped(autojump_clock: trio.testing.MockClock) -> None:
    """Attack 4: unbonding credit was released by the block's own timestamp and receivers
    accepted timestamps up to 60 s ahead with a 60 s delay: a pay dated 51 s ahead spent
    unstaked credit 9 s after the unstake. Now that genesis is refused, and with a sound one
    (10 min delay, 30 s skew) a pay dated as far ahead as accepted, sent 9 s after the
    unstake, is applied nowhere until the delay has passed."""
    with pytest.raises(ConfigError, match="unbonding_delay_ms"):
        cfg(ledger={"unbonding_delay_s": 60, "max_clock_skew_s": 60})
    weak = dataclasses.replace(cfg().ledger_params, unbonding_delay_s=60, max_clock_skew_s=60).network_params()
    with pytest.raises(StoreError, match="unbonding_delay_ms"):
        LedgerStore(":memory:", weak)
    configs = [cfg(models=False), cfg(ledger={"initial_staked": 500}), cfg(models=False)]
    async with open_cluster(configs, network=MemoryNetwork(seed=14), seed=14,
                            backends=lambda i: fake() if i == 1 else {}) as c:
        gw, cheat, third = c[0], c[1], c[2]
        await until(lambda: opened(c)() and cheat.ledger.writable)
        await cheat.ledger.unstake(500 * MICRO)
        t_unstake = cheat.ledger.now_ms()
        await trio.sleep(9)
        params = cheat.ledger.store.params
        receipt = make_receipt(random.Random(1), params.network_id, cheat.peer_id, gw.signer, 990 * MICRO)
        ahead = cheat.ledger.now_ms() + params.max_clock_skew_ms
        spend = rules.next_block(cheat.signer, cheat.ledger.store.state, PayBody((receipt,)), ahead)
        await cheat.transport.publish(blocks_topic(params.network_id, params.digest()), spend.encode())
        await trio.sleep(30)
        for n in (gw, third):
            assert n.ledger.store.state.hash_at(cheat.peer_id, spend.height) is None
            assert n.ledger.store.state.account(cheat.peer_id).unbonding_total == 500 * MICRO  # type: ignore[union-attr]
        # after the delay (+ skew) a properly dated spend is fine everywhere
        await trio.sleep((params.unbonding_delay_ms + params.max_clock_skew_ms) / 1000)
        later = rules.next_block(cheat.signer, cheat.ledger.store.state, PayBody((receipt,)),
                                 t_unstake + params.unbonding_delay_ms + params.max_clock_skew_ms)
        await cheat.transport.publish(blocks_topic(params.network_id, params.digest()), later.encode())
        await until(lambda: all(n.ledger.store.state.hash_at(cheat.peer_id, later.height) == later.digest() for n in (gw, third)))


async def raw_offers(net: MemoryNetwork, who: Signer, executor: Node, n: int) -> list[str]:
    """Offer ``n`` requests straight to ``executor`` as ``who``; the reject reason (or
    "accepted") of each."""
    out = []
    async with net.open_transport(who) as t:
        await t.connect(executor.transport.listen_addrs()[0])
        for i in range(n):
            stream = await t.open_stream(executor.peer_id, INFER_PROTOCOL)
            fs = FramedStream(stream)
            req = InferRequest(sha256(bytes([i]) + who.seed)[:16], executor.network_id, who.peer_id, executor.peer_id,
                               MODEL, "chat", b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":8}',
                               int(executor.ledger.now_ms()), "", 10**9, b"").signed(who)
            await fs.send(req)
            reply = await fs.recv(timeout=5)
            out.append(reply.reason if isinstance(reply, Reject) else "accepted")
            await fs.aclose()
    return out


async def test_item5_executors_serve_nobody_for_free(autojump_clock: trio.testing.MockClock) -> None:
    """Attack 5: a key with no ledger account had 11 of 13 offers answered, each with a
    receipt, and never paid. Now an executor takes an offer only from an opened account
    whose free credit covers the worst case, and stops serving one that leaves a receipt
    unpaid past the grace period."""
    configs = [cfg(), cfg(models=False, ledger={"initial_credit": 1000})]
    async with open_cluster(configs, network=MemoryNetwork(seed=15), seed=15,
                            backends=lambda i: fake() if i == 0 else {}) as c:
        ex, payer = c[0], c[1]
        await until(lambda: opened(c)() and ex.ledger.writable)
        ghost = Signer(sha256(b"no account"))
        assert await raw_offers(c.network, ghost, ex, 13) == ["no-account"] * 13
        assert ex.serve.counters.served_for_peers == 0
        # an account that never pays: served until a receipt is overdue, then refused
        payer.ledger.queue.queue_receipt = lambda r: False  # type: ignore[method-assign]
        await until(lambda: bool(payer.peers.candidates(MODEL)))
        await ask(payer)
        assert ex.serve.counters.served_for_peers == 1
        await trio.sleep(ex.ledger.payers.payment_grace_ms / 1000 + 1)
        with pytest.raises(NoCapacity):
            await ask(payer)
        assert ex.serve.counters.served_for_peers == 1 and ex.serve.counters.offers_rejected >= 1


def backup(path: Path, dest: Path) -> None:
    src = sqlite3.connect(path)
    dst = sqlite3.connect(dest)
    src.backup(dst)
    dst.close()
    src.close()


def restore(dest: Path, path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    shutil.copy(dest, path)


async def test_item6_a_stale_restart_does_not_fork_its_chain(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Attack 6: a node restarted on a slightly stale ledger (its own last two blocks
    missing) re-wrote those heights before syncing, freezing it network-wide or making peers
    reject its every later block. Now it pulls the network's copy first: it learns its two
    blocks back, writes on top of them, and every node ends at the same fingerprint."""
    params = cfg().ledger_params.network_params()
    path = tmp_path / "ex" / "ledger.sqlite3"
    async with open_cluster([cfg(models=False), cfg(models=False)], network=MemoryNetwork(seed=16), seed=16) as c:
        await c.add(cfg(), fake(), ledger_store=LedgerStore(path, params))
        gw, ex = c[0], c[2]
        await until(lambda: opened(c)() and bool(gw.peers.candidates(MODEL)) and ex.ledger.writable)
        await ask(gw)
        await gw.ledger.flush()
        await until(lambda: ex.ledger.claimed == 1)
        backup(path, tmp_path / "backup.sqlite3")
        height = ex.ledger.store.state.account(ex.peer_id).height  # type: ignore[union-attr]
        for _ in range(2):
            await ask(gw)
            await gw.ledger.flush()
        await until(lambda: ex.ledger.store.state.account(ex.peer_id).height == height + 2)  # type: ignore[union-attr]
        await until(same_fingerprint(c.alive()))
        c.kill(2)
        ex.ledger.store.close()
        restore(tmp_path / "backup.sqlite3", path)
        stale = LedgerStore(path, params)
        assert stale.state.account(ex.peer_id).height == height  # type: ignore[union-attr]
        ex = await c.restart(2, fake(), ledger_store=stale)
        await until(lambda: ex.ledger.writable)
        assert ex.ledger.store.state.account(ex.peer_id).height == height + 2  # type: ignore[union-attr]
        await ask(gw)
        await gw.ledger.flush()
        await until(lambda: ex.ledger.store.state.account(ex.peer_id).height == height + 3)  # type: ignore[union-attr]
        await until(same_fingerprint(c.alive()))
        assert not any(n.ledger.store.state.frozen() for n in c.alive()) and ex.ledger.repairs == 0
        report = audit_store(ex.ledger.store)
        assert report.ok and not report.offences


async def test_item6_a_conflicting_block_of_our_own_is_repaired_not_forked(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Attack 6 (the neighbour): while a node was down, another process with its key wrote
    the next block of its chain; the node's own data dir holds a different block at that
    height. On restart it logs the conflict loudly, drops its block, adopts the network's,
    and the network converges without freezing it."""
    params = cfg().ledger_params.network_params()
    path = tmp_path / "n" / "ledger.sqlite3"
    async with open_cluster([cfg(models=False), cfg(models=False)], network=MemoryNetwork(seed=17), seed=17) as c:
        await c.add(cfg(models=False, ledger={"initial_staked": 5}), ledger_store=LedgerStore(path, params))
        await until(lambda: opened(c)() and c[2].ledger.writable)
        me = c[2]
        signer, head = me.signer, me.ledger.store.state.account(me.peer_id)
        assert head is not None
        c.kill(2)
        me.ledger.store.close()
        ts = me.ledger.now_ms()
        theirs = make_block(signer, network_id=params.network_id, height=head.height + 1, prev=head.head,
                            body=StakeBody(MICRO), timestamp_ms=ts)
        ours = make_block(signer, network_id=params.network_id, height=head.height + 1, prev=head.head,
                          body=StakeBody(2 * MICRO), timestamp_ms=ts)
        await c[0].transport.publish(blocks_topic(params.network_id, params.digest()), theirs.encode())
        await until(lambda: c[1].ledger.store.state.hash_at(me.peer_id, head.height + 1) == theirs.digest())
        local = LedgerStore(path, params)
        local.append(ours)  # the stale local copy never reached anyone
        me = await c.restart(2, ledger_store=local)
        await until(lambda: me.ledger.repairs == 1 and me.ledger.writable)
        assert me.ledger.store.state.hash_at(me.peer_id, head.height + 1) == theirs.digest()
        await until(same_fingerprint(c.alive()))
        assert not any(n.ledger.store.state.frozen() for n in c.alive())


async def test_item7_an_equivocation_strands_no_honest_chain(autojump_clock: trio.testing.MockClock) -> None:
    """Attack 7: a cheater sent pay(→X) to X and a conflicting block at the same height to
    the gateway; a third node learned of the freeze before either block and refused both,
    so X's claim of that pay, and every block X wrote after it, never applied there. Now the
    fork choice keeps the branch X relied on: every node ends at the same fingerprint with
    X's claim valid, and the cheater frozen."""
    configs = [cfg(models=False), cfg(models=False), cfg(models=False)]
    async with open_cluster(configs, network=MemoryNetwork(seed=18), seed=18) as c:
        gw, x, third = c[0], c[1], c[2]
        await until(lambda: opened(c)() and all(n.ledger.writable for n in c.alive()))
        params = gw.ledger.store.params
        topic = blocks_topic(params.network_id, params.digest())
        cheat = Signer(sha256(b"cheater"))
        ts = gw.ledger.now_ms()
        open_block = make_block(cheat, network_id=params.network_id, height=0, prev=ZERO_HASH, body=OpenBody(0), timestamp_ms=ts)
        await gw.transport.publish(topic, open_block.encode())
        await until(lambda: all(n.ledger.store.state.account(cheat.peer_id) is not None for n in c.alive()))
        receipt = make_receipt(random.Random(2), params.network_id, cheat.peer_id, x.signer, 300 * MICRO)
        to_x = make_block(cheat, network_id=params.network_id, height=1, prev=open_block.digest(),
                          body=PayBody((receipt,)), timestamp_ms=ts + 1)
        to_gw = make_block(cheat, network_id=params.network_id, height=1, prev=open_block.digest(),
                           body=StakeBody(900 * MICRO), timestamp_ms=ts + 1)
        proof = EquivocationProof(to_x, to_gw)
        assert third.ledger.store.add_proof(proof)  # the third node learns of the freeze first
        x.ledger.store.ingest([to_x], now_ms=x.ledger.now_ms())  # the cheater tells X only
        gw.ledger.store.ingest([to_gw], now_ms=gw.ledger.now_ms())  # and the gateway only the other
        await until(lambda: x.ledger.claimed == 1)
        await until(same_fingerprint(c.alive()))
        for n in c.alive():
            st = n.ledger.store.state
            assert st.is_frozen(cheat.peer_id)
            assert st.is_claimed(to_x.digest()) and st.claimable(to_x.digest()) is None
            assert st.account(x.peer_id).free >= 1300 * MICRO  # type: ignore[union-attr]
        # X keeps writing, and its later blocks apply everywhere
        await x.ledger.stake(MICRO)
        await until(lambda: all(n.ledger.store.state.account(x.peer_id).staked == MICRO for n in c.alive()))  # type: ignore[union-attr]
        await until(same_fingerprint(c.alive()))
        # every node's audit passes (the proof is an offence found, not corrupt data) and
        # recomputes the same fingerprint from the stored blocks alone
        for n in c.alive():
            report = audit_store(n.ledger.store)
            assert report.ok and [o.account for o in report.offences] == [cheat.peer_id]
            assert fingerprint(report.state) == fingerprint(n.ledger.store.state)


def audit_store(store: LedgerStore) -> audit.AuditReport:
    return audit.audit(audit.from_store(store))


async def test_item8_stake_alone_cannot_capture_every_request(autojump_clock: trio.testing.MockClock) -> None:
    """Attack 8: five throwaway accounts paid one account, which staked 5,995 credits, was
    drawn first for every request, accepted, and never answered: every request took 60 s
    before failover and nothing remembered the offender. Now the first stall earns a strike:
    the offender cools off, then is offered work only after every clean peer, so only one
    request pays the 60 s."""
    genesis = {"initial_credit": 6000, "max_initial_staked": 6000}
    configs = [cfg(models=False, ledger=genesis), cfg(ledger={**genesis, "initial_staked": 5995}),
               cfg(ledger={**genesis, "initial_staked": 10})]
    async with open_cluster(configs, network=MemoryNetwork(seed=19), seed=19,
                            backends=lambda i: {} if i == 0 else {MODEL: ScriptedBackend(model=MODEL, script=[Hang()])}
                            if i == 1 else fake()) as c:
        gw, capture, honest = c[0], c[1], c[2]
        await until(lambda: opened(c)() and len(gw.peers.candidates(MODEL)) == 2 and gw.ledger.writable
                    and gw.ledger.stake_of(capture.peer_id) == 5995 * MICRO)
        waits = []
        for _ in range(8):
            t0 = trio.current_time()
            done = await ask(gw)
            waits.append(trio.current_time() - t0)
            assert done.executor == honest.peer_id
        assert waits[0] >= 60 and all(w < 5 for w in waits[1:]), waits
        (entry,) = gw.status()["offenders"]
        assert entry["peer_id"] == capture.peer_id and entry["last"] == "stall"
