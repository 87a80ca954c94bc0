"""An LLM server under load, as arithmetic: the step-time model and a continuous-batching
scheduler (vLLM-like), in virtual time.

Pure: no trio, no I/O, no clock, no randomness. Time is an argument (``now``, seconds) and
request lengths come from the caller, so the same calls give the same steps. The async
shell is :mod:`p2pserve.sim.backend`, which sleeps each step's duration on trio's clock.

**Step time** (:func:`step_time`, ``research/duel-and-simulation.md`` §D, the sum form)::

    t = c0 + c_req·B + t_weights + t_kv·Σ_decode ctx_i + Σ_prefill (t_pf·n_j + t_aq·n_j·(ctx_j + n_j/2))

``B`` requests in the step; the weights are read once per step; each decoding request reads
the KV of its context; a prefill chunk of ``n_j`` tokens after ``ctx_j`` already computed
ones costs its linear FLOPs and its causal attention. Decode tokens' own FLOPs are not
charged (memory-bound below ~128 tokens per step, where the §B1 profile is flat); at very
large decode batches this underestimates a step.

**Scheduling** (:class:`BatchScheduler`, Vidur's vLLM scheduler and vLLM's own, §B1): one
engine iteration at a time, planned by :meth:`~BatchScheduler.next_step` and applied by
:meth:`~BatchScheduler.finish_step`:

1. every running request whose prefill is done decodes one token; when it needs a new KV
   block and none is free, the most recently admitted running request is preempted
   (recompute: its blocks are freed, it goes back to the head of the queue and later
   re-prefills its prompt and the tokens it had generated);
2. the rest of the token budget (``chunk_tokens``) goes to running requests still in
   prefill, oldest first (chunked prefill);
3. unless step 1 preempted someone, waiting requests are admitted strictly in FIFO order
   while the batch has room, budget is left, and the head's blocks (prompt + tokens
   generated so far, rounded up to blocks) leave at least the watermark free for the
   running requests to grow into (none is needed when nothing runs, so whatever fits in
   the cache is served); an admitted request gets its blocks for that whole prefill at once.

The step that completes a prefill samples a token (a request's first token: its TTFT; after
a preemption, its next one); each decode step samples one more. A request finishes with
exactly ``min(max_output_tokens, output_tokens)`` tokens.

**Multi-iteration steps.** Simulating one Python step per engine iteration is what makes a
simulator slow, so :meth:`~BatchScheduler.next_step` may, when asked (``until``), cover a
run of identical decode-only iterations in one :class:`Step`: no prefill, nobody waiting who
could be admitted, nobody finishing before its last iteration, and enough free blocks for
every block boundary crossed. Its duration is the exact sum of those iterations (each one
``growth`` longer than the last as contexts grow), so the result is the same as stepping one
at a time. When something happens in the middle (an arrival, a cancel),
:meth:`~BatchScheduler.cut` shortens it to the iterations already started.

Invariants (tested): KV blocks in use never exceed the capacity; ``token_usage`` is in
``[0, 1]``; every request that is not cancelled finishes with exactly its tokens; admission
is FIFO; a preempted request resumes where it was.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["BatchScheduler", "Profile", "QueueLoad", "Step", "Tokens", "step_time"]


@dataclass(frozen=True, slots=True)
class Profile:
    """One model on one GPU, as the step-time model sees it. Times are seconds.

    Loaded from ``configs/sim/profiles/*.yaml`` by :mod:`p2pserve.sim.profiles`, where every
    number says where it comes from.
    """

    model: str
    gpu: str
    weight_bytes: int
    """Model weights in GPU memory (informative: the time terms below already include them)."""
    kv_bytes_per_token: int
    """KV cache per token: 2 (K, V) × layers × KV heads × head dim × 2 bytes."""
    kv_capacity_tokens: int
    """KV cache tokens that fit after weights and activations (vLLM's ``num_gpu_blocks`` × block)."""
    c0_s: float
    """Fixed per-step overhead (scheduling, sampling, kernel launches)."""
    c_req_s: float
    """Per-step overhead per request in the batch (input preparation, output processing)."""
    weight_read_s: float
    """Reading the weights once from HBM (every step)."""
    kv_read_s_per_token: float
    """Reading one context token's KV cache (per decoding request, per step)."""
    prefill_s_per_token: float
    """Linear-layer FLOPs of one prompt token."""
    attn_quad_s_per_token2: float
    """Attention FLOPs per (new token × context token) pair of a prefill chunk."""
    max_batch: int = 256
    """Most requests running at once (vLLM ``max_num_seqs``)."""
    chunk_tokens: int = 2048
    """Token budget of one step (vLLM ``max_num_batched_tokens``; chunked prefill)."""
    block_tokens: int = 16
    """KV block size (vLLM's default)."""
    watermark: float = 0.01
    """Fraction of KV blocks admission leaves free (Vidur's ``watermark_blocks_fraction``)."""
    context_length: int = 32768
    """Longest prompt + answer the server accepts (``max_model_len``)."""

    def __post_init__(self) -> None:
        ints = ("weight_bytes", "kv_bytes_per_token", "kv_capacity_tokens", "max_batch", "chunk_tokens", "block_tokens",
                "context_length")
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1 (got {value!r})")
        times = ("c0_s", "c_req_s", "weight_read_s", "kv_read_s_per_token", "prefill_s_per_token", "attn_quad_s_per_token2")
        for name in times:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (got {value!r})")
        if self.c0_s + self.weight_read_s <= 0:
            raise ValueError("a step must take time: c0_s + weight_read_s must be > 0")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be within [0, 1) (got {self.watermark!r})")
        if self.chunk_tokens <= self.max_batch:
            # vLLM's defaults keep this so that every running request can decode every step
            raise ValueError(f"chunk_tokens ({self.chunk_tokens}) must exceed max_batch ({self.max_batch})")
        if self.kv_capacity_tokens < 2 * self.block_tokens:
            raise ValueError("kv_capacity_tokens must hold at least two blocks")

    @property
    def name(self) -> str:
        """``model/gpu``, the name :func:`p2pserve.sim.profiles.load_profile` resolves."""
        return f"{self.model}/{self.gpu}"


def step_time(profile: Profile, decode_contexts: Sequence[int], prefill_chunks: Sequence[tuple[int, int]]) -> float:
    """Seconds one engine iteration takes (the module docstring's formula).

    ``decode_contexts``: the context length (prompt + tokens generated) of each decoding
    request; ``prefill_chunks``: ``(tokens already computed, tokens in this chunk)`` of each
    prefilling request. An empty step takes no time.
    """
    batch = len(decode_contexts) + len(prefill_chunks)
    if batch == 0:
        return 0.0
    p = profile
    t = p.c0_s + p.c_req_s * batch + p.weight_read_s + p.kv_read_s_per_token * sum(decode_contexts)
    for done, n in prefill_chunks:
        t += p.prefill_s_per_token * n + p.attn_quad_s_per_token2 * n * (done + n / 2)
    return t


@dataclass(frozen=True, slots=True)
class Tokens:
    """What one step did for one request: ``count`` new tokens, ``generated`` in all so far.

    ``first``: this step produced the request's first token (TTFT); ``finished``: it now has
    all its tokens and has left the scheduler.
    """

    req_id: int
    count: int
    generated: int
    first: bool
    finished: bool


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """The gauges a vLLM server exports: ``num_requests_running``, ``num_requests_waiting``
    and KV usage (used blocks / all blocks, in ``[0, 1]``)."""

    running: int
    waiting: int
    token_usage: float


@dataclass(frozen=True, slots=True)
class Step:
    """One planned step: ``iterations`` engine iterations from ``start``, ``duration`` seconds.

    ``decode`` requests get one token per iteration; ``prefill`` lists (request, tokens of its
    chunk) and has entries only in single-iteration steps. ``first`` is the first iteration's
    duration and ``growth`` how much longer each next one is (contexts grow by one token).
    """

    start: float
    iterations: int
    duration: float
    decode: tuple[int, ...]
    prefill: tuple[tuple[int, int], ...]
    admitted: tuple[int, ...]
    preempted: tuple[int, ...]
    first: float
    growth: float

    @property
    def end(self) -> float:
        return self.start + self.duration


def _span(first: float, growth: float, k: int) -> float:
    """Duration of ``k`` iterations whose first takes ``first`` and each next ``growth`` more."""
    return k * first + growth * (k * (k - 1) / 2)


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The largest ``k`` in ``[lo, hi]`` with ``ok(k)`` (``ok`` monotone, true at ``lo``)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Req:
    """One request's bookkeeping. ``prefill_target`` is what it prefills on (re)admission:
    its prompt plus the tokens it had generated; ``computed`` counts how far that went."""

    __slots__ = ("blocks", "computed", "generated", "id", "prefill_target", "prompt", "state", "target")

    def __init__(self, req_id: int, prompt: int, target: int) -> None:
        self.id = req_id
        self.prompt = prompt
        self.target = target
        self.generated = 0
        self.computed = 0
        self.prefill_target = 0
        self.blocks = 0
        self.state = _WAITING


_WAITING, _RUNNING, _GONE = 0, 1, 2


class BatchScheduler:
    """A vLLM-like continuous-batching engine for one :class:`Profile` (module docstring).

    Drive it with ``step = next_step(now)``; wait ``step.duration``; ``finish_step(step)``.
    :meth:`add` and :meth:`cancel` may come at any time, also while a step is in flight.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.total_blocks = profile.kv_capacity_tokens // profile.block_tokens
        self.watermark_blocks = int(profile.watermark * self.total_blocks)
        self.used_blocks = 0
        self._reqs: dict[int, _Req] = {}
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []  # in admission order: the last is the youngest
        self._inflight: Step | None = None

    # -- requests ----------------------------------------------------------------------

    def add(self, req_id: int, prompt_tokens: int, max_output_tokens: int, output_tokens: int) -> int:
        """Queue a request; return how many tokens it will generate
        (``min(max_output_tokens, output_tokens)``, at least 1).

        Raises ValueError for a known ``req_id``, a prompt below one token, or a request
        that could never fit in the KV cache (it would block the FIFO queue forever).
        Request ids must not be reused while a step that saw the old one is in flight.
        """
        if req_id in self._reqs:
            raise ValueError(f"request {req_id!r} is already queued or running")
        if prompt_tokens < 1:
            raise ValueError(f"prompt_tokens must be >= 1 (got {prompt_tokens})")
        target = max(1, min(max_output_tokens, output_tokens))
        if self._blocks_for(prompt_tokens + target) > self.total_blocks:
            raise ValueError(f"{prompt_tokens} + {target} tokens can never fit in {self.profile.kv_capacity_tokens} KV tokens")
        req = _Req(req_id, prompt_tokens, target)
        self._reqs[req_id] = req
        self._waiting.append(req)
        return target

    def cancel(self, req_id: int) -> bool:
        """Drop a request (the user left): its KV blocks are free at once. False if unknown
        (already finished or cancelled)."""
        req = self._reqs.pop(req_id, None)
        if req is None:
            return False
        if req.state == _WAITING:
            self._waiting.remove(req)
        else:
            self._running.remove(req)
            self._free(req)
        req.state = _GONE
        return True

    def load(self) -> QueueLoad:
        return QueueLoad(len(self._running), len(self._waiting), self.used_blocks / self.total_blocks)

    @property
    def used_tokens(self) -> int:
        """KV tokens held by running requests (whole blocks)."""
        return self.used_blocks * self.profile.block_tokens

    def outstanding_tokens(self) -> int:
        """Tokens still to process: prompts (and recomputation) not prefilled yet plus
        output not generated yet, over every request here (join-shortest-queue's measure)."""
        total = 0
        for r in self._reqs.values():
            prefill = r.prompt + r.generated if r.state == _WAITING else r.prefill_target  # waiting: (re)prefill all
            total += max(0, prefill - (0 if r.state == _WAITING else r.computed)) + (r.target - r.generated)
        return total

    def idle(self) -> bool:
        """Nothing queued or running."""
        return not self._reqs

    def __contains__(self, req_id: int) -> bool:
        return req_id in self._reqs

    # -- steps -------------------------------------------------------------------------

    def next_step(self, now: float, until: float | None = None) -> Step | None:
        """Plan the next step starting at ``now`` (None when there is nothing to do).

        With ``until``, a decode-only step may cover several iterations, as many as end by
        ``until`` (at least one); see the module docstring. The step is in flight until
        :meth:`finish_step`; planning another before that is an error.
        """
        if self._inflight is not None:
            raise RuntimeError("finish the step in flight before planning the next")
        decode, preempted = self._schedule_decodes()
        budget = self.profile.chunk_tokens - len(decode)
        prefill, budget = self._schedule_prefills(budget)
        admitted = [] if preempted else self._admit(budget, prefill)
        if not decode and not prefill:
            return None
        p = self.profile
        contexts = [r.prompt + r.generated for r in decode]
        chunks = [(self._reqs[i].computed, n) for i, n in prefill]
        first = step_time(p, contexts, chunks)
        growth = p.kv_read_s_per_token * len(decode)
        k = 1
        if until is not None and not prefill and not preempted:
            k = self._iterations(decode, first, growth, until - now)
        step = Step(now, k, _span(first, growth, k), tuple(r.id for r in decode), tuple(prefill), tuple(admitted),
                    tuple(preempted), first, growth)
        self._inflight = step
        return step

    def cut(self, step: Step, now: float) -> Step:
        """``step`` shortened to the iterations that started before ``now`` (at least one):
        something changed at ``now`` that the next iteration must see."""
        if step is not self._inflight:
            raise RuntimeError("only the step in flight can be cut")
        k = _largest(1, step.iterations, lambda m: step.start + _span(step.first, step.growth, m - 1) < now)
        if k == step.iterations:
            return step
        cut = Step(step.start, k, _span(step.first, step.growth, k), step.decode, step.prefill, step.admitted, step.preempted,
                   step.first, step.growth)
        self._inflight = cut
        return cut

    def finish_step(self, step: Step) -> list[Tokens]:
        """Apply the step in flight: new tokens, first tokens, finished requests (which
        leave and free their blocks). Requests cancelled meanwhile are skipped."""
        if step is not self._inflight:
            raise RuntimeError("only the step in flight can be finished")
        self._inflight = None
        k = step.iterations
        events: list[Tokens] = []
        done = False
        for rid in step.decode:
            req = self._reqs.get(rid)
            if req is None or req.state != _RUNNING:
                continue
            if k > 1:  # blocks for iterations 2..k, checked free by next_step
                self._grow(req, req.prompt + req.generated + k - 1)
            done |= self._produce(req, k, events)
        for rid, n in step.prefill:
            req = self._reqs.get(rid)
            if req is None or req.state != _RUNNING:
                continue
            req.computed += n
            if req.computed == req.prefill_target:
                done |= self._produce(req, 1, events)
        if done:
            self._running = [r for r in self._running if r.state == _RUNNING]
        return events

    # -- internals ---------------------------------------------------------------------

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.profile.block_tokens)

    def _grow(self, req: _Req, tokens: int) -> None:
        need = self._blocks_for(tokens) - req.blocks
        if need > 0:
            req.blocks += need
            self.used_blocks += need

    def _free(self, req: _Req) -> None:
        self.used_blocks -= req.blocks
        req.blocks = 0

    def _produce(self, req: _Req, count: int, events: list[Tokens]) -> bool:
        first = req.generated == 0
        req.generated += count
        finished = req.generated >= req.target
        events.append(Tokens(req.id, count, req.generated, first, finished))
        if finished:
            self._free(req)
            req.state = _GONE
            del self._reqs[req.id]
        return finished

    def _preempt_youngest(self) -> _Req:
        victim = self._running.pop()
        self._free(victim)
        victim.state = _WAITING
        victim.computed = 0
        self._waiting.appendleft(victim)
        return victim

    def _schedule_decodes(self) -> tuple[list[_Req], list[int]]:
        """Step 1: one token for every request past its prefill, preempting for blocks."""
        decode: list[_Req] = []
        preempted: list[int] = []
        for req in list(self._running):
            if req.state != _RUNNING or req.computed < req.prefill_target:
                continue
            need = self._blocks_for(req.prompt + req.generated) - req.blocks
            while need > self.total_blocks - self.used_blocks:
                victim = self._preempt_youngest()
                preempted.append(victim.id)
                if victim is req:
                    break
            else:
                req.blocks += need
                self.used_blocks += need
                decode.append(req)
        return decode, preempted

    def _schedule_prefills(self, budget: int) -> tuple[list[tuple[int, int]], int]:
        """Step 2: the next chunk of every running request still in prefill, oldest first."""
        chunks: list[tuple[int, int]] = []
        for req in self._running:
            if budget <= 0:
                break
            left = req.prefill_target - req.computed
            if left > 0:
                n = min(left, budget)
                chunks.append((req.id, n))
                budget -= n
        return chunks, budget

    def _admit(self, budget: int, chunks: list[tuple[int, int]]) -> list[int]:
        """Step 3: FIFO admission; appends each admitted request's first chunk to ``chunks``."""
        admitted: list[int] = []
        while self._waiting and budget > 0 and self._fits(self._waiting[0]):
            req = self._waiting.popleft()
            target = req.prompt + req.generated
            req.state, req.prefill_target, req.computed = _RUNNING, target, 0
            req.blocks = self._blocks_for(target)
            self.used_blocks += req.blocks
            self._running.append(req)
            n = min(target, budget)
            chunks.append((req.id, n))
            budget -= n
            admitted.append(req.id)
        return admitted

    def _iterations(self, reqs: list[_Req], first: float, growth: float, span: float) -> int:
        """How many identical decode-only iterations this step may cover (at least one)."""
        if self._could_admit():
            return 1
        most = min(r.target - r.generated for r in reqs)  # the first to finish ends the step
        free = self.total_blocks - self.used_blocks

        def blocks_ok(k: int) -> bool:
            return sum(self._blocks_for(r.prompt + r.generated + k - 1) - r.blocks for r in reqs) <= free

        most = _largest(1, most, lambda k: _span(first, growth, k) <= span)
        return _largest(1, most, blocks_ok)

    def _could_admit(self) -> bool:
        """Whether the queue's head could be admitted now (then one iteration at a time)."""
        return bool(self._waiting) and self._fits(self._waiting[0])

    def _fits(self, req: _Req) -> bool:
        """Room in the batch and KV blocks for ``req``'s prefill, leaving the watermark free
        for the running requests to grow (none is needed when nothing runs)."""
        if len(self._running) >= self.profile.max_batch:
            return False
        reserve = self.watermark_blocks if self._running else 0
        return self.total_blocks - self.used_blocks - self._blocks_for(req.prompt + req.generated) >= reserve
