"""The simulated LLM server's step-time model and scheduler (p2pserve.sim.batching), and the
shipped profiles (p2pserve.sim.profiles).

Calibration: the targets of ``research/duel-and-simulation.md`` §D, each within 20 %, with
the profiles as shipped. Two profile numbers differ from ``research/sim-profile-constants.md``,
each for a reason written in the profile files: the untied Qwen3-8B (and Llama-3-8B) embedding
is not read every step (otherwise the H100 batch-1 TPOT is 24 % high), and ``c_req`` is
Vidur's measured 0.1 ms per request, not §D's 0.03 ms (otherwise the H100 batch-16 TPOT is
21-23 % low). The closest calls are noted at each test.

Scheduler properties (Hypothesis): KV never over capacity, usage in [0, 1], every request
that is not cancelled ends with exactly its tokens, FIFO admission, preempted requests
resume, cancel frees KV, and multi-iteration steps give the same timeline as single ones.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pserve.errors import ConfigError
from p2pserve.sim.batching import BatchScheduler, Profile, Step, Tokens, step_time
from p2pserve.sim.profiles import PROFILE_DIR, load_profile, parse_profile, profile_names

# -- a driver: requests arriving at given times, steps run back to back ---------------------


@dataclass
class Record:
    arrival: float
    prompt: int
    out: int
    first: float | None = None
    end: float | None = None
    tokens: list[int] = field(default_factory=list)


@dataclass
class Run:
    records: dict[int, Record]
    steps: list[Step]
    end: float


def drive(profile: Profile, arrivals: list[tuple[float, int, int]], *, span: float | None = None,
          closed: int = 0) -> Run:
    """Run ``arrivals`` (time, prompt, output) to completion, one step after another.

    ``span``: let steps cover several iterations up to ``span`` seconds, cutting a step when
    an arrival falls inside it (what :class:`SimBackend` does). ``closed``: a closed loop of
    that many clients instead: each arrival after the first ``closed`` comes when a request
    finishes (times in ``arrivals`` are then ignored).
    """
    sched = BatchScheduler(profile)
    pending = sorted(((t, i) for i, (t, _, _) in enumerate(arrivals[:closed] if closed else arrivals)), reverse=True)
    backlog = list(range(len(arrivals) - 1, closed - 1, -1)) if closed else []
    records: dict[int, Record] = {}
    steps: list[Step] = []
    now = 0.0
    while pending or not sched.idle():
        while pending and pending[-1][0] <= now:
            _, i = pending.pop()
            _, prompt, out = arrivals[i]
            sched.add(i, prompt, out, out)
            records[i] = Record(now, prompt, out)
        step = sched.next_step(now, None if span is None else now + span)
        if step is None:
            now = pending[-1][0]
            continue
        if pending and step.iterations > 1 and pending[-1][0] < step.end:
            step = sched.cut(step, pending[-1][0])
        steps.append(step)
        now = step.end
        for ev in sched.finish_step(step):
            rec = records[ev.req_id]
            rec.tokens.append(ev.count)
            if ev.first:
                rec.first = now
            if ev.finished:
                rec.end = now
                if backlog:
                    pending.append((now, backlog.pop()))
        assert sched.used_blocks <= sched.total_blocks
    return Run(records, steps, now)


def tpot(r: Record) -> float:
    assert r.first is not None and r.end is not None
    return (r.end - r.first) / (r.out - 1)


def within(value: float, target: float, tolerance: float = 0.20) -> bool:
    return abs(value / target - 1) <= tolerance


def clients(n: int, prompt: int, out: int, stagger: float = 0.0) -> list[tuple[float, int, int]]:
    return [(i * stagger, prompt, out) for i in range(n)]


def toy(**kw: object) -> Profile:
    """A tiny server for property tests: 32 KV blocks, 4 running requests, 64-token steps."""
    base: dict[str, object] = dict(model="toy", gpu="toy", weight_bytes=1, kv_bytes_per_token=1, kv_capacity_tokens=512,
                                   c0_s=1e-3, c_req_s=1e-4, weight_read_s=5e-3, kv_read_s_per_token=1e-6,
                                   prefill_s_per_token=1e-4, attn_quad_s_per_token2=1e-8, max_batch=4, chunk_tokens=64,
                                   watermark=0.05, context_length=512)
    base.update(kw)
    return Profile(**base)  # type: ignore[arg-type]


# -- the step-time formula ---------------------------------------------------------------------


def test_step_time_is_the_sum_form() -> None:
    p = toy()
    assert step_time(p, [], []) == 0.0
    decode = 1e-3 + 2e-4 + 5e-3 + 1e-6 * (100 + 300)
    assert step_time(p, [100, 300], []) == pytest.approx(decode)
    # a 50-token chunk after 30 computed tokens: linear FLOPs and the causal attention term
    chunk = 1e-3 + 1e-4 + 5e-3 + 1e-4 * 50 + 1e-8 * 50 * (30 + 25)
    assert step_time(p, [], [(30, 50)]) == pytest.approx(chunk)
    both = 1e-3 + 3e-4 + 5e-3 + 1e-6 * 400 + 1e-4 * 50 + 1e-8 * 50 * 55
    assert step_time(p, [100, 300], [(30, 50)]) == pytest.approx(both)


def test_profile_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        toy(chunk_tokens=4)
    with pytest.raises(ValueError, match="watermark"):
        toy(watermark=1.0)
    with pytest.raises(ValueError, match="kv_capacity_tokens"):
        toy(kv_capacity_tokens=0)
    with pytest.raises(ValueError, match="c0_s"):
        toy(c0_s=float("nan"))


# -- calibration (research/duel-and-simulation.md §D) ----------------------------------------


def test_llama3_8b_a100_40gb_batch_1_decodes_75_tokens_per_second() -> None:
    """§B3: Llama-3.1-8B, vLLM 0.23, A100-40GB, 1024 in / 128 out, one request at a time:
    ~75 tok/s. Model: 68.5 tok/s (-9 %)."""
    run = drive(load_profile("llama3-8b/a100-40gb"), clients(5, 1024, 128), closed=1)
    rate = 1 / statistics.mean(tpot(r) for r in run.records.values())
    assert within(rate, 75.0), rate


def test_llama3_8b_a100_40gb_concurrency_8_multiplies_throughput() -> None:
    """§B3: the same sweep at concurrency 8 gives 6.6x the throughput of 1. Model: 5.7x
    (-14 %): every new request's 1024-token prefill shares the steps of the others."""
    p = load_profile("llama3-8b/a100-40gb")
    one = drive(p, clients(20, 1024, 128), closed=1)
    eight = drive(p, clients(160, 1024, 128, stagger=0.013), closed=8)
    gain = (160 / eight.end) / (20 / one.end)
    assert within(gain, 6.6), gain


def test_h100_tpot_at_batch_1_and_16() -> None:
    """§B3: Llama-3.1-8B on an H100 (vLLM 0.21, short chat prompts): TPOT 6.48 ms at
    concurrency 1 and 10.94 ms at 16. The Qwen3-8B profile stands in for it: same
    architecture family and per-step bytes within 1 % (7.57e9 versus 7.50e9 streamed
    parameters); its 36 layers only change the KV term, small at these contexts. Prompts of
    200 tokens reproduce the measured 14 ms TTFT. Model: 7.64 ms (+18 %, the closest call)
    and 9.8 ms (-11 %) in a staggered closed loop."""
    p = load_profile("qwen3-8b/h100-80gb")
    one = drive(p, clients(5, 200, 256), closed=1)
    assert within(statistics.mean(tpot(r) for r in one.records.values()), 6.48e-3)
    assert within(one.records[0].first or 0, 14e-3)
    sixteen = drive(p, clients(320, 200, 256, stagger=0.013), closed=16)
    steady = [tpot(r) for i, r in sixteen.records.items() if i >= 16]
    assert within(statistics.mean(steady), 10.94e-3), statistics.mean(steady)
    assert within(step_time(p, [300] * 16, []), 10.94e-3)  # the bare batch-16 step: 9.4 ms (-14 %)


def test_qwen3_8b_rtx3090_saturated_output_rate() -> None:
    """§B3: Qwen3-8B fp16 on 2x RTX 3090 (DP2), 4096 in / 1024 out: 387 output tok/s, ~190
    per card. Model: 152.8 tok/s, 19.6 % low: the closest call. KV holds ~7 such requests
    (35,279 tokens); ~27 % of requests are preempted once and recompute 4-5k tokens (vLLM V1
    would find part of them in its prefix cache); the 3090's 71 bf16 TFLOPS are unverified
    (research/duel-and-simulation.md §F)."""
    run = drive(load_profile("qwen3-8b/rtx3090"), clients(512, 4096, 1024), closed=64, span=0.5)
    rate = 512 * 1024 / run.end
    assert within(rate, 190.0), rate
    assert sum(len(s.preempted) for s in run.steps) > 0  # KV-bound: preemption happens


@pytest.mark.parametrize("prompt", [512, 2048])
def test_h100_prefills_2_3x_faster_than_a100(prompt: int) -> None:
    """§B2 (Splitwise perf_model.csv): H100/A100 prompt time ~2.3x. Model (Qwen3-8B, whole
    prompt through the scheduler): 2.30x at 512, 2.56x at 2048 tokens. Longer prompts drift
    up to the compute-bound ratio 989x0.55 / (312x0.65) = 2.68x (+17 %), plus the A100's
    2048-token chunks: 2.78x at 8192 (+21 %), the table's MFU choice, left as is."""
    def ttft(p: Profile) -> float:
        run = drive(p, [(0.0, prompt, 1)])
        return run.records[0].first or 0.0

    ratio = ttft(load_profile("qwen3-8b/a100-80gb")) / ttft(load_profile("qwen3-8b/h100-80gb"))
    assert within(ratio, 2.3), ratio


@pytest.mark.parametrize(("batch", "splitwise"), [(1, 54.9 / 37.0), (16, 65.9 / 42.0)])
def test_h100_decodes_1_5x_faster_than_a100(batch: int, splitwise: float) -> None:
    """§B2: Splitwise token time, A100/H100: 1.48x at batch 1, 1.57x at 16. Model: 1.51x, 1.44x."""
    a, h = load_profile("qwen3-8b/a100-80gb"), load_profile("qwen3-8b/h100-80gb")
    ratio = step_time(a, [1000] * batch, []) / step_time(h, [1000] * batch, [])
    assert within(ratio, splitwise), ratio


# -- the shipped profiles --------------------------------------------------------------------


def test_every_model_gpu_pair_ships_and_loads() -> None:
    models = ("qwen3-8b", "qwen3-4b", "qwen3-0.6b")
    gpus = ("a100-80gb", "a100-40gb", "h100-80gb", "rtx4090", "rtx3090")
    names = profile_names()
    grid = {f"{m}/{g}" for m in models for g in gpus} | {"llama3-8b/a100-40gb"}
    derived = {f"qwen3-8b-{v}/a100-80gb" for v in ("fp8wo", "int4wo-128", "int4wo-32", "flashinfer", "triton", "sdpa")}
    assert set(names) == grid | derived  # the grid, plus the quantization and attention variants of fig9/fig10
    for name in names:
        p = load_profile(name)
        assert p.name == name
        assert p.context_length <= p.kv_capacity_tokens  # vLLM refuses to start otherwise


def test_every_profile_number_says_where_it_comes_from() -> None:
    for path in PROFILE_DIR.glob("*.yaml"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            key = line.split(":")[0]
            if line.startswith("#") or key in ("model", "gpu"):
                continue
            sourced = "#" in line or lines[i - 1].startswith("#")
            assert sourced, f"{path.name}: {line}"


def test_8b_decodes_slower_than_4b_slower_than_0_6b_on_every_gpu() -> None:
    for gpu in ("a100-80gb", "a100-40gb", "h100-80gb", "rtx4090", "rtx3090"):
        times = [step_time(load_profile(f"{m}/{gpu}"), [1000], []) for m in ("qwen3-8b", "qwen3-4b", "qwen3-0.6b")]
        assert times == sorted(times, reverse=True), gpu


def test_profile_loader_errors_name_the_problem(tmp_path: Path) -> None:
    good = (PROFILE_DIR / "qwen3-8b_h100-80gb.yaml").read_text()
    with pytest.raises(ConfigError, match="known: .*qwen3-8b/h100-80gb"):
        load_profile("qwen3-8b/b200")
    with pytest.raises(ConfigError, match="model/gpu"):
        load_profile("qwen3-8b")
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        parse_profile({**parse_raw(good), "colour": "green"})
    with pytest.raises(ConfigError, match="missing key 'c0_s'"):
        parse_profile({k: v for k, v in parse_raw(good).items() if k != "c0_s"})
    with pytest.raises(ConfigError, match=r"c0_s: must be a number \(write 1.0e-3"):
        parse_profile({**parse_raw(good), "c0_s": "1e-3"})
    with pytest.raises(ConfigError, match="max_batch: must be an integer"):
        parse_profile({**parse_raw(good), "max_batch": 2.5})
    with pytest.raises(ConfigError, match="chunk_tokens"):
        parse_profile({**parse_raw(good), "chunk_tokens": 16})
    path = tmp_path / "mine.yaml"
    path.write_text(good.replace("gpu: h100-80gb", "gpu: my-h100"))
    assert load_profile(path).gpu == "my-h100"
    (tmp_path / "qwen3-8b_my-h100.yaml").write_text(path.read_text())
    assert load_profile("qwen3-8b/my-h100", directory=tmp_path).name == "qwen3-8b/my-h100"


def parse_raw(text: str) -> dict[str, object]:
    import yaml

    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)
    return raw


# -- scheduler behaviour -------------------------------------------------------------------------


def test_a_single_request_prefills_then_decodes_one_token_per_step() -> None:
    p = toy()
    run = drive(p, [(0.0, 100, 5)])
    prefill = [s for s in run.steps if s.prefill]
    assert [s.prefill[0][1] for s in prefill] == [64, 36]  # chunked within the 64-token budget
    r = run.records[0]
    assert r.tokens == [1, 1, 1, 1, 1] and r.end == run.end
    first = step_time(p, [], [(0, 64)]) + step_time(p, [], [(64, 36)])
    assert r.first == pytest.approx(first)
    decode = sum(step_time(p, [100 + k], []) for k in range(1, 5))
    assert r.end == pytest.approx(first + decode)


def test_decodes_share_steps_with_prefill_chunks() -> None:
    run = drive(toy(), [(0.0, 20, 10), (0.0, 200, 3)])
    mixed = [s for s in run.steps if s.decode and s.prefill]
    assert mixed and all(n <= 64 - len(s.decode) for s in mixed for _, n in s.prefill)


def test_admission_is_fifo_and_waits_for_blocks() -> None:
    # 32 blocks, watermark 1 block: a 300-token prompt (19 blocks) leaves no room for the next one
    sched = BatchScheduler(toy())
    for i, prompt in enumerate((300, 200, 10)):
        sched.add(i, prompt, 4, 4)
    step = sched.next_step(0.0)
    assert step is not None and step.admitted == (0,)  # 1 (13 blocks) does not fit; 2 may not jump it
    assert sched.load().waiting == 2


def test_max_batch_bounds_running() -> None:
    sched = BatchScheduler(toy())
    for i in range(6):
        sched.add(i, 4, 50, 50)
    step = sched.next_step(0.0)
    assert step is not None and step.admitted == (0, 1, 2, 3)
    assert (sched.load().running, sched.load().waiting) == (4, 2)


def test_preemption_takes_the_youngest_which_resumes_where_it_was() -> None:
    # four requests of 112 prompt tokens (7 blocks each, 28 of 32) that grow to 200 tokens
    p = toy(kv_capacity_tokens=512, watermark=0.0)
    run = drive(p, [(0.0, 112, 88)] * 4)
    preempted = [i for s in run.steps for i in s.preempted]
    assert preempted and preempted[0] == 3  # the most recently admitted goes first
    for rec in run.records.values():
        assert sum(rec.tokens) == rec.out and rec.end is not None
    # it re-prefilled its prompt plus what it had generated, then went on
    again = [s for s in run.steps if any(i == 3 for i, _ in s.prefill)]
    assert sum(n for s in again for i, n in s.prefill if i == 3) > 112


def test_cancel_frees_kv_at_once_and_skips_the_step_in_flight() -> None:
    sched = BatchScheduler(toy())
    sched.add(0, 40, 50, 50)  # 3 blocks
    sched.add(1, 20, 1, 1)  # 2 blocks
    step = sched.next_step(0.0)
    assert step is not None and step.admitted == (0, 1) and sched.used_blocks == 5
    assert sched.cancel(0) and not sched.cancel(0)
    assert sched.used_blocks == 2
    events = sched.finish_step(step)
    assert [(e.req_id, e.finished) for e in events] == [(1, True)]  # 0's chunk is dropped
    assert sched.used_blocks == 0 and sched.idle() and sched.load().token_usage == 0.0


def test_add_refuses_what_can_never_fit_and_duplicates() -> None:
    sched = BatchScheduler(toy())
    with pytest.raises(ValueError, match="never fit"):
        sched.add(0, 500, 100, 100)
    sched.add(1, 10, 10, 10)
    with pytest.raises(ValueError, match="already"):
        sched.add(1, 10, 10, 10)
    assert sched.add(2, 10, 3, 100) == 3  # max_tokens caps the answer


def test_one_step_in_flight_at_a_time() -> None:
    sched = BatchScheduler(toy())
    sched.add(0, 10, 10, 10)
    step = sched.next_step(0.0)
    assert step is not None
    with pytest.raises(RuntimeError):
        sched.next_step(0.0)
    sched.finish_step(step)
    with pytest.raises(RuntimeError):
        sched.finish_step(step)


def test_multi_iteration_steps_stop_where_a_request_finishes() -> None:
    run = drive(toy(), [(0.0, 10, 30), (0.0, 10, 12)], span=10.0)
    decode_runs = [s for s in run.steps if s.iterations > 1]
    assert decode_runs and decode_runs[0].iterations == 11  # the 12-token request ends it
    assert run.records[1].end == decode_runs[0].end


# -- properties ------------------------------------------------------------------------------------

arrival_lists = st.lists(
    st.tuples(st.floats(0, 0.5), st.integers(1, 120), st.integers(1, 120)), min_size=1, max_size=14
).map(lambda xs: sorted(xs))


@settings(max_examples=150, deadline=None)
@given(arrival_lists, st.sampled_from([None, 0.05, 1.0]))
def test_every_request_gets_exactly_its_tokens_and_kv_stays_within_capacity(
    arrivals: list[tuple[float, int, int]], span: float | None
) -> None:
    run = drive(toy(), arrivals, span=span)
    for rec in run.records.values():
        assert sum(rec.tokens) == rec.out
        assert rec.first is not None and rec.end is not None and rec.arrival <= rec.first <= rec.end
    admitted = [i for s in run.steps for i in s.admitted]
    firsts = list(dict.fromkeys(admitted))
    assert firsts == sorted(firsts)  # first admissions in arrival order (FIFO)
    for i in {i for s in run.steps for i in s.preempted}:
        assert admitted.count(i) >= 2  # preempted, then admitted again, and finished (above)


@settings(max_examples=100, deadline=None)
@given(arrival_lists)
def test_multi_iteration_steps_give_the_same_timeline(arrivals: list[tuple[float, int, int]]) -> None:
    one = drive(toy(), arrivals)
    many = drive(toy(), arrivals, span=0.2)
    for i, rec in one.records.items():
        other = many.records[i]
        assert other.first == pytest.approx(rec.first, rel=1e-9, abs=1e-12)
        assert other.end == pytest.approx(rec.end, rel=1e-9, abs=1e-12)
    assert len(many.steps) <= len(one.steps)


@settings(max_examples=100, deadline=None)
@given(arrival_lists, st.data())
def test_usage_stays_in_range_and_cancel_frees_everything(arrivals: list[tuple[float, int, int]], data: st.DataObject) -> None:
    sched = BatchScheduler(toy())
    for i, (_, prompt, out) in enumerate(arrivals):
        sched.add(i, prompt, out, out)
    now, done = 0.0, set()
    for _ in range(data.draw(st.integers(0, 60))):
        step = sched.next_step(now, now + 0.1)
        if step is None:
            break
        if data.draw(st.booleans()):
            victim = data.draw(st.sampled_from(range(len(arrivals))))
            assert sched.cancel(victim) == (victim not in done)
            done.add(victim)
        now = step.end
        events: list[Tokens] = sched.finish_step(step)
        done |= {e.req_id for e in events if e.finished}
        usage = sched.load().token_usage
        assert 0.0 <= usage <= 1.0 and sched.used_blocks <= sched.total_blocks
    for i in range(len(arrivals)):
        sched.cancel(i)
    assert sched.used_blocks == 0 and sched.load() == dataclasses.replace(sched.load(), running=0, waiting=0, token_usage=0.0)
