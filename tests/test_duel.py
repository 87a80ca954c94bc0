"""Duel-and-judge end to end on real nodes (memory transport, virtual time): blind shadows,
drawn judges, verdict blocks that move stake weight, ratings every node agrees on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from p2pserve.backends.base import Backend
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.config import NodeConfig, parse_config
from p2pserve.duel.judging import JudgeResult
from p2pserve.ledger import audit
from p2pserve.ledger.state import fingerprint
from p2pserve.node import Node
from p2pserve.serving.events import Completed
from p2pserve.sim.cluster import Cluster, open_cluster
from p2pserve.testing.stream_helpers import until as wait_until_true
from p2pserve.units import MICRO
from p2pserve.wire.infer import InferRequest
from transports.memory import MemoryNetwork

MODEL = "fake-model"


def cfg(*, models: str | None = None, duel_rate: float = 0.0, judge: bool = False, staked: float = 10,
        method: str = "fake", **server: Any) -> NodeConfig:
    raw: dict[str, Any] = {
        "server_params": {"accept_frequency": 1.0, "duel_rate": duel_rate, "judge": judge, "judge_method": method, **server},
        "ledger_params": {"initial_staked": staked},
        "models": [{"model_path": MODEL, "backend": "fake", "fake": {"answers": models}}] if models else [],
    }
    return parse_config(raw)


def fake(answers: str) -> dict[str, Backend]:
    return {MODEL: build_backend(BackendSpec(MODEL, kind="fake", fake={"answers": answers}))}


GOOD, NOISY = 1, 2
CONFIGS = [cfg(duel_rate=1.0), cfg(models="words"), cfg(models="noise"), cfg(judge=True)]


def backends(i: int) -> dict[str, Backend]:
    return {GOOD: fake("words"), NOISY: fake("noise")}.get(i, {})


async def until(pred: Callable[[], bool], timeout: float = 120.0) -> None:
    await wait_until_true(pred, timeout)


async def ready(c: Cluster) -> None:
    gw = c[0]
    opened = lambda: all(n.ledger.store.state.account(m.peer_id) is not None for n in c.alive() for m in c.alive())  # noqa: E731
    await until(lambda: opened() and len(gw.peers.candidates(MODEL)) == 2 and gw.ledger.writable
                and any(e.status.judge for e in gw.peers.entries()))


async def ask(node: Node, i: int) -> Completed:
    body = {"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 16}
    done = None
    async with node.serve.submit("chat", MODEL, body, key=f"q{i}") as events:
        async for ev in events:
            if isinstance(ev, Completed):
                done = ev
    assert done is not None
    return done


def settled(c: Cluster, n: int) -> Callable[[], bool]:
    return lambda: all(len(x.ledger.store.state.verdicts()) >= n for x in c.alive()) and \
        len({fingerprint(x.ledger.store.state) for x in c.alive()}) == 1


async def test_the_better_executor_wins_every_decided_duel(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(CONFIGS, network=MemoryNetwork(seed=41), seed=41, backends=backends) as c:
        gw, good, noisy, judge = c[0], c[GOOD], c[NOISY], c[3]
        await ready(c)
        for i in range(10):
            await ask(gw, i)
        await until(lambda: gw.duels.running == 0)
        assert gw.duels.counters.started == 10 and gw.duels.counters.settled == 10
        await gw.ledger.flush()
        await until(settled(c, 10))
        for node in c.alive():
            verdicts = node.ledger.store.state.verdicts()
            assert len(verdicts) == 10 and {v.judge for v in verdicts} == {judge.peer_id}
            for v in verdicts:
                winner = v.a if v.outcome == "A" else v.b
                assert v.outcome != "tie" and winner == good.peer_id
        penalty = gw.ledger.store.params.duel_penalty
        st = gw.ledger.store.state
        assert st.stake_of(good.peer_id) == 10 * MICRO + 10 * penalty
        assert st.stake_of(noisy.peer_id) == 0 and st.stake_delta(noisy.peer_id) == -10 * penalty
        ratings = [n.ledger.ratings() for n in c.alive()]
        assert all(r == ratings[0] for r in ratings)
        assert ratings[0][good.peer_id].rating > 1000 > ratings[0][noisy.peer_id].rating
        assert judge.judge is not None and judge.judge.judged == 10
        fee = gw.ledger.store.params.judge_fee
        await until(lambda: judge.ledger.free() == 990 * MICRO + 10 * fee)  # its fees were paid and claimed
        status = good.status()
        assert status["duels"]["won"] == 10 and status["ratings"][good.peer_id]["wins"] == 10
        assert gw.status()["duels"]["started"] == 10
        for node in c.alive():
            report = audit.audit(audit.from_store(node.ledger.store))
            assert report.problems == []


async def test_the_shadow_offer_is_an_ordinary_offer(autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blindness: the bytes an executor receives in a duel's shadow offer differ from an
    ordinary offer of the same prompt only in the request ID, the executor, the timestamp
    and the signature: same tag, same fields otherwise, same size."""
    from p2pserve.serving import executor as executor_module

    seen: list[InferRequest] = []
    real = executor_module.InferExecutor._check_offer

    def spy(self: Any, req: InferRequest) -> str | None:
        seen.append(req)
        return real(self, req)

    monkeypatch.setattr(executor_module.InferExecutor, "_check_offer", spy)
    async with open_cluster(CONFIGS, network=MemoryNetwork(seed=42), seed=42, backends=backends) as c:
        gw = c[0]
        await ready(c)
        await ask(gw, 1)
        await until(lambda: gw.duels.running == 0 and len(seen) == 2)
        first, shadow = seen
        assert first.executor != shadow.executor
        ignore = {"request_id": b"", "executor": "", "created_ms": 0, "signature": b""}
        assert dataclasses.replace(first, **ignore) == dataclasses.replace(shadow, **ignore)  # type: ignore[arg-type]
        assert len(first.encode()) == len(shadow.encode())


async def test_a_position_biased_judge_gives_only_ties(autojump_clock: trio.testing.MockClock) -> None:
    """A judge whose model always prefers the first answer it is shown: the two orders
    disagree on every duel, so every verdict is a tie and no stake moves."""
    configs = [cfg(duel_rate=1.0), cfg(models="words"), cfg(models="noise"),
               cfg(judge=True, method="tests.test_duel:FirstAnswerJudge")]
    async with open_cluster(configs, network=MemoryNetwork(seed=43), seed=43, backends=backends) as c:
        gw = c[0]
        await ready(c)
        for i in range(4):
            await ask(gw, i)
        await until(settled(c, 4))
        assert {v.outcome for v in gw.ledger.store.state.verdicts()} == {"tie"}
        assert gw.ledger.store.state.stake_of(c[GOOD].peer_id) == 10 * MICRO


class FirstAnswerJudge:
    """llm-pairwise with a model that always answers [[A]] (pure position bias)."""

    def __init__(self, **_: Any) -> None:
        from p2pserve.duel.methods import PairwiseJudge

        async def always_a(messages: list[dict[str, str]]) -> str:
            return "The first one is better. [[A]]"

        self._inner = PairwiseJudge(always_a, name="first-answer")
        self.name = "first-answer"

    async def judge(self, question: str, answer_a: str, answer_b: str) -> JudgeResult:
        return await self._inner.judge(question, answer_a, answer_b)


async def test_a_failing_shadow_ends_the_duel_with_nothing_moved(autojump_clock: trio.testing.MockClock) -> None:
    def failing(i: int) -> dict[str, Backend]:
        if i == NOISY:
            return {MODEL: build_backend(BackendSpec(MODEL, kind="fake", fake={"fault_rate": 1.0, "faults": ("http500",)}))}
        return backends(i)

    async with open_cluster(CONFIGS, network=MemoryNetwork(seed=44), seed=44, backends=failing) as c:
        gw = c[0]
        await ready(c)
        done = await ask(gw, 0)
        assert done.executor == c[GOOD].peer_id  # the user got the good answer, as without a duel
        await until(lambda: gw.duels.running == 0)
        assert gw.duels.counters.abandoned >= 1 and gw.duels.counters.settled == 0
        await trio.sleep(5)
        assert gw.ledger.store.state.verdict_count() == 0


async def test_a_vanished_judge_ends_the_duel_with_nothing_moved(autojump_clock: trio.testing.MockClock) -> None:
    configs = [cfg(duel_rate=1.0, judge_timeout=20.0), cfg(models="words"), cfg(models="noise"), cfg(judge=True)]
    async with open_cluster(configs, network=MemoryNetwork(seed=45), seed=45, backends=backends) as c:
        gw = c[0]
        await ready(c)
        c.kill(3)
        await ask(gw, 0)
        await until(lambda: gw.duels.running == 0, timeout=200)
        assert gw.duels.counters.abandoned == 1 and gw.ledger.store.state.verdict_count() == 0
        assert gw.ledger.queue.held == 0  # the judge's fee hold was released


def test_a_judge_needs_a_model_for_a_model_method() -> None:
    from p2pserve.errors import ConfigError

    with pytest.raises(ConfigError):
        load = cfg(judge=True, method="reference-similarity")
        Node(load, *_signer_and_transport())


def _signer_and_transport() -> tuple[Any, Any]:
    from p2pserve.crypto import Signer

    s = Signer(bytes(32))

    class _T:
        peer_id = s.peer_id

    return s, _T()




async def test_the_judge_refuses_what_the_ledger_would(autojump_clock: trio.testing.MockClock) -> None:
    """The judge checks a task before spending its model on it: a task it already judged, a
    tampered answer or prompt, an order with a forged signature, an order that draws another
    judge are refused with their reason and write nothing."""
    from p2pserve.ledger.blocks import VerdictBody
    from p2pserve.wire.duel import JudgeCandidate, JudgeTask

    async with open_cluster(CONFIGS, network=MemoryNetwork(seed=46), seed=46, backends=backends) as c:
        gw, judge = c[0], c[3]
        await ready(c)
        await ask(gw, 0)
        await until(settled(c, 1))
        block = next(b for b in judge.ledger.store.blocks_after(judge.peer_id, -1, 10)
                     if isinstance(b.decoded_body(), VerdictBody))
        body = block.decoded_body()
        assert isinstance(body, VerdictBody)
        order = body.order
        prompt = b'{"max_tokens":16,"messages":[{"content":"question 0","role":"user"}]}'
        assert judge.judge is not None
        refusal = judge.judge.refusal
        from p2pserve.backends.fake.plan import plan_request

        request = {"max_tokens": 16, "messages": [{"content": "question 0", "role": "user"}]}
        kinds = {c[GOOD].peer_id: "words", c[NOISY].peer_id: "noise"}
        answers = tuple(plan_request("chat", request, model=MODEL, answers=kinds[e]).text for e in order.executors)  # type: ignore[arg-type]
        assert refusal(JudgeTask(order, prompt, answers)) == "already-judged"
        assert refusal(JudgeTask(order, prompt, (answers[1], answers[0]))) == "mismatch: an answer does not match its receipt"
        assert refusal(JudgeTask(order, prompt + b" ", answers)) == "mismatch: the prompt does not match the order"
        forged = dataclasses.replace(order, signature=bytes(64))
        assert str(refusal(JudgeTask(forged, prompt, answers))).startswith("bad-signature")
        elsewhere = dataclasses.replace(order, candidates=(JudgeCandidate(gw.peer_id[:-1] + "x", 5),), signature=b"")
        elsewhere = elsewhere.signed(gw.signer)
        assert refusal(JudgeTask(elsewhere, prompt, answers)) == "not-drawn"
        before = judge.ledger.store.state.verdict_count()
        answer = await judge.judge.judge(JudgeTask(order, prompt, answers))
        assert type(answer).__name__ == "JudgeRefusal"
        assert judge.ledger.store.state.verdict_count() == before


async def test_rating_weight_tilts_routing_towards_the_better_executor(autojump_clock: trio.testing.MockClock) -> None:
    configs = [cfg(duel_rate=1.0, rating_weight=1.0), cfg(models="words"), cfg(models="noise"), cfg(judge=True)]
    async with open_cluster(configs, network=MemoryNetwork(seed=47), seed=47, backends=backends) as c:
        gw, good, noisy = c[0], c[GOOD], c[NOISY]
        await ready(c)
        for i in range(3):
            await ask(gw, i)
        await until(settled(c, 3))
        entry = {e.peer_id: e for e in gw.peers.entries()}
        plain = {p: min(entry[p].status.stake, gw.ledger.stake_of(p)) for p in (good.peer_id, noisy.peer_id)}
        rating = gw.ledger.ratings()[good.peer_id].rating
        assert gw._stake_of(entry[good.peer_id]) == round(plain[good.peer_id] * 10 ** ((rating - 1000) / 400))
        assert gw._stake_of(entry[good.peer_id]) > plain[good.peer_id]
