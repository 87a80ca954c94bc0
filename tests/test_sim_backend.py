"""SimBackend (p2pserve.sim.backend): the simulated LLM server on trio's virtual clock.

It passes the backend conformance suite; its timings are the step-time model's (a lone
request's TTFT and TPOT are exactly the scheduler's steps); concurrent requests batch; its
load is the scheduler's; a user who leaves frees the KV cache at once; multi-iteration steps
change nothing a client can time; answers carry a deterministic quality marker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import pytest
import trio
import trio.testing

from p2pserve.backends.base import Finished, TextDelta
from p2pserve.errors import BackendResponseError, BackendUnavailable
from p2pserve.sim.backend import CORRECT, TOKEN_TEXT, WRONG, SimBackend, estimate_prompt_tokens, judged_correct
from p2pserve.sim.batching import Profile, step_time
from p2pserve.sim.judge import quality_of
from p2pserve.sim.profiles import load_profile
from p2pserve.testing.backend_suite import BackendConformance, MakeBackend, collect

H100 = load_profile("qwen3-8b/h100-80gb")


def small(**kw: Any) -> Profile:
    """A100-80GB Qwen3-8B numbers on a server with room for 4 requests and 4,096 KV tokens."""
    return dataclasses.replace(load_profile("qwen3-8b/a100-80gb"), max_batch=4, chunk_tokens=512, kv_capacity_tokens=4096,
                               context_length=4096, **kw)


def sim_body(prompt: int, output: int, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "p2pserve_sim": {"prompt_tokens": prompt, "output_tokens": output},
            **extra}


def fast(profile: Profile, factor: float) -> Profile:
    """``profile`` with every time multiplied by ``factor``."""
    times = ("c0_s", "c_req_s", "weight_read_s", "kv_read_s_per_token", "prefill_s_per_token", "attn_quad_s_per_token2")
    return dataclasses.replace(profile, **{name: getattr(profile, name) * factor for name in times})


class TestSimBackendConformance(BackendConformance):
    """The suite's tests run on trio's real clock (pytest-trio takes the clock from the test's
    own arguments), so the server here is an H100 a thousand times faster."""

    @pytest.fixture(params=[None, 0.5], ids=["plain", "quality"])
    async def make_backend(self, request: pytest.FixtureRequest, nursery: trio.Nursery) -> MakeBackend:
        def make() -> SimBackend:
            backend = SimBackend(fast(H100, 1e-3), quality=request.param)
            nursery.start_soon(backend.run)
            return backend

        return make


@pytest.fixture
async def started(nursery: trio.Nursery) -> Callable[..., Any]:
    """``await started(profile, **kw)``: a running SimBackend (closed with the test). The
    tests take ``autojump_clock`` themselves: pytest-trio only sees a test's own arguments."""
    async def start(profile: Profile = H100, **kw: Any) -> SimBackend:
        backend = SimBackend(profile, **kw)
        await nursery.start(backend.run)
        return backend

    return start


async def timed(backend: SimBackend, body: dict[str, Any], continuation: str = "") -> list[tuple[float, TextDelta | Finished]]:
    """Every event of one generation with the virtual time it came at."""
    out: list[tuple[float, TextDelta | Finished]] = []
    async with aclosing(backend.generate("chat", body, continuation=continuation)) as events:  # type: ignore[type-var]
        async for ev in events:
            out.append((trio.current_time(), ev))
    return out


async def test_a_lone_request_times_are_the_step_model(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100, stream_interval=0.0)
    t0 = trio.current_time()
    events = await timed(backend, sim_body(10_000, 20))
    deltas = [(t - t0, ev) for t, ev in events if isinstance(ev, TextDelta)]
    assert len(deltas) == 20 and all(ev.text == TOKEN_TEXT for _, ev in deltas)
    ttft = step_time(H100, [], [(0, 8192)]) + step_time(H100, [], [(8192, 10_000 - 8192)])
    assert deltas[0][0] == pytest.approx(ttft)
    for k in range(1, 20):  # each further token: one decode step over the grown context
        assert deltas[k][0] - deltas[k - 1][0] == pytest.approx(step_time(H100, [10_000 + k], []))
    final = events[-1][1]
    assert final == Finished("stop", 10_000, 20)


async def test_stream_interval_batches_tokens_without_moving_first_or_last(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    async def offsets(backend: SimBackend) -> list[tuple[float, TextDelta | Finished]]:
        t0 = trio.current_time()
        return [(t - t0, ev) for t, ev in await timed(backend, sim_body(300, 400))]

    fine = await offsets(await started(H100, stream_interval=0.0))
    coarse = await offsets(await started(H100, stream_interval=1.0))
    assert len(fine) == 401 and len(coarse) < 20
    text = "".join(ev.text for _, ev in coarse if isinstance(ev, TextDelta))
    assert text == TOKEN_TEXT * 400 and coarse[-1][1] == fine[-1][1] == Finished("stop", 300, 400)
    assert coarse[0][0] == pytest.approx(fine[0][0], rel=1e-12)  # TTFT
    assert coarse[-1][0] == pytest.approx(fine[-1][0], rel=1e-9)  # end to end
    gaps = [b[0] - a[0] for a, b in zip(coarse, coarse[1:])]
    assert max(gaps) <= 1.0


async def test_fifty_concurrent_requests_batch(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100)
    t0 = trio.current_time()
    await timed(backend, sim_body(500, 200))
    alone = trio.current_time() - t0
    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        for _ in range(50):
            n.start_soon(timed, backend, sim_body(500, 200))
        await trio.sleep(alone / 2)
        assert (await backend.load()).running == 50
    together = trio.current_time() - t0
    assert together < 3 * alone  # one after another: 50x
    assert (await backend.load()).running == 0


async def test_load_is_the_schedulers(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(small())
    assert (await backend.load()).known
    async with trio.open_nursery() as n:
        for _ in range(7):
            n.start_soon(timed, backend, sim_body(300, 100))
        await trio.sleep(0.5)
        load = await backend.load()
        assert (load.running, load.queued, load.source) == (4, 3, "metrics")
        assert load.token_usage is not None and 4 * 300 / 4096 < load.token_usage <= 1.0
    load = await backend.load()
    assert (load.running, load.queued, load.token_usage) == (0, 0, 0.0)


async def test_a_user_who_leaves_frees_the_kv_cache(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(small(), stream_interval=0.0)
    got: list[str] = []
    others: list[list[tuple[float, TextDelta | Finished]]] = []

    async def other() -> None:
        others.append(await timed(backend, sim_body(200, 50)))

    async with trio.open_nursery() as n:
        n.start_soon(other)
        async with aclosing(backend.generate("chat", sim_body(2000, 1000))) as events:  # type: ignore[type-var]
            async for ev in events:
                assert isinstance(ev, TextDelta)
                got.append(ev.text)
                if len(got) == 5:
                    break
        load = await backend.load()
        assert load.running == 1 and load.token_usage is not None and load.token_usage < 300 / 4096
    assert len(got) == 5 and others[0][-1][1] == Finished("stop", 200, 50)
    assert (await backend.load()).token_usage == 0.0 and backend.scheduler.idle()


async def test_cancelling_the_consumer_task_cancels_the_request(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(small())
    with trio.move_on_after(1.0):
        await timed(backend, sim_body(100, 10_000 - 200))
    load = await backend.load()
    assert (load.running, load.queued, load.token_usage) == (0, 0, 0.0)


async def test_arrivals_inside_a_long_step_are_timed_as_if_stepped_one_by_one(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    async def scenario(backend: SimBackend) -> list[float]:
        ends: list[float] = []
        t0 = trio.current_time()

        async def one(delay: float, prompt: int, out: int) -> None:
            await trio.sleep(delay)
            events = await timed(backend, sim_body(prompt, out))
            first = next(t for t, ev in events if isinstance(ev, TextDelta))
            ends.extend((first - t0, events[-1][0] - t0))

        async with trio.open_nursery() as n:
            for i, (delay, prompt, out) in enumerate([(0, 900, 300), (0.37, 200, 40), (1.21, 3000, 5), (1.5, 10, 500)]):
                n.start_soon(one, delay + i * 1e-4, prompt, out)
        return sorted(ends)

    stepped = await scenario(await started(small(), stream_interval=0.0))
    batched = await scenario(await started(small(), stream_interval=2.0))
    assert batched == pytest.approx(stepped, rel=1e-9)


async def test_max_tokens_and_context_cut_the_answer(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(small())
    text, final = await collect(backend, "chat", sim_body(100, 50, max_tokens=7))
    assert final == Finished("length", 100, 7) and text == TOKEN_TEXT * 7
    text, final = await collect(backend, "chat", sim_body(4000, 500))
    assert final == Finished("length", 4000, 96)
    with pytest.raises(BackendResponseError) as info:
        await collect(backend, "chat", sim_body(4096, 5))
    assert info.value.status_code == 400


async def test_without_lengths_the_prompt_is_estimated(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100, default_output_tokens=9)
    body = {"messages": [{"role": "system", "content": "x" * 40}, {"role": "user", "content": [{"type": "text", "text": "y" * 21}]}]}
    assert estimate_prompt_tokens("chat", body) == 10 + 6 + 2 * 4
    _, final = await collect(backend, "chat", body)
    assert final == Finished("stop", 24, 9)
    assert estimate_prompt_tokens("completion", {"prompt": "z" * 9}) == 3
    assert estimate_prompt_tokens("completion", {"prompt": [1, 2, 3, 4]}) == 4


async def test_continuation_counts_as_prompt_and_shortens_the_answer(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100, quality=1.0)
    full, first = await collect(backend, "chat", sim_body(100, 30))
    assert full.startswith(CORRECT) and first.completion_tokens == 30
    delivered = full[: len(CORRECT) + 9 * len(TOKEN_TEXT)]  # 10 tokens
    rest, final = await collect(backend, "chat", sim_body(100, 30, max_tokens=20), continuation=delivered)
    assert delivered + rest == full and final == Finished("stop", 110, 20)
    _, done = await collect(backend, "chat", sim_body(100, 30), continuation=full)
    assert done == Finished("stop", 130, 0)


async def test_quality_marker_is_deterministic_per_request_and_backend(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100, quality=0.7, seed=1)
    twin = await started(H100, quality=0.7, seed=1)
    other = await started(H100, quality=0.7, seed=2)
    verdicts = []
    for i in range(300):
        body = sim_body(10, 2, user=f"q{i}")
        text, _ = await collect(backend, "chat", body)
        verdicts.append(judged_correct(text))
        if i < 20:
            assert (await collect(backend, "chat", body))[0] == text == (await collect(twin, "chat", body))[0]
    assert set(verdicts) == {True, False} and 0.62 < verdicts.count(True) / 300 < 0.78
    others = [judged_correct((await collect(other, "chat", sim_body(10, 2, user=f"q{i}")))[0]) for i in range(300)]
    assert others != verdicts  # another seed draws independently


async def test_quality_per_task(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100, quality={"math": 0.0, "*": 1.0})
    math_body = {**sim_body(10, 3), "p2pserve_sim": {"prompt_tokens": 10, "output_tokens": 3, "task": "math"}}
    assert (await collect(backend, "chat", math_body))[0] == WRONG + TOKEN_TEXT * 2
    assert (await collect(backend, "chat", sim_body(10, 3)))[0] == CORRECT + TOKEN_TEXT * 2
    plain = await started(H100)
    assert judged_correct((await collect(plain, "chat", sim_body(10, 3)))[0]) is None


async def test_quality_class_marks_every_answer_for_the_simulated_judge(started: Callable[..., Any],
                                                                        autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100, quality_class="qwen3-8b")
    text, final = await collect(backend, "chat", sim_body(10, 3))
    assert text == "[q=qwen3-8b]" + TOKEN_TEXT * 2 and final.completion_tokens == 3
    assert quality_of(text) == "qwen3-8b"
    correct = await started(H100, quality=1.0)
    assert quality_of((await collect(correct, "chat", sim_body(10, 3)))[0]) == "correct"
    with pytest.raises(ValueError, match="not both"):
        SimBackend(H100, quality=0.5, quality_class="x")


async def test_closing_fails_waiting_generators(started: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    backend = await started(H100)
    failures: list[BaseException] = []

    async def ask() -> None:
        try:
            await collect(backend, "chat", sim_body(100, 20_000))
        except BackendUnavailable as exc:
            failures.append(exc)

    async with trio.open_nursery() as n:
        n.start_soon(ask)
        await trio.sleep(0.1)
        await backend.aclose()
    assert len(failures) == 1
    with pytest.raises(BackendUnavailable):
        await collect(backend, "chat", sim_body(10, 2))


def test_constructor_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="quality"):
        SimBackend(H100, quality=1.5)
    with pytest.raises(ValueError, match="quality"):
        SimBackend(H100, quality={"*": -0.1})
    with pytest.raises(ValueError, match="stream_interval"):
        SimBackend(H100, stream_interval=-1)
    backend = SimBackend(H100, model="qwen", context_length=8192)
    assert (backend.model, backend.context_length, backend.max_concurrency, backend.supports_continuation) == ("qwen", 8192, 1024, True)


async def test_requests_made_before_the_engine_starts_wait_for_it(nursery: trio.Nursery,
                                                                   autojump_clock: trio.testing.MockClock) -> None:
    backend = SimBackend(H100)
    results: list[Finished] = []

    async def ask() -> None:
        results.append((await collect(backend, "chat", sim_body(10, 3)))[1])

    nursery.start_soon(ask)
    await trio.sleep(5)
    assert results == [] and (await backend.load()).queued == 1
    await nursery.start(backend.run)
    await trio.sleep(1)
    assert results == [Finished("stop", 10, 3)]
    await backend.aclose()

