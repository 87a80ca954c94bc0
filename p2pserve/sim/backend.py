"""A simulated LLM server behind the :class:`~p2pserve.backends.base.Backend` contract, in
virtual time: :class:`SimBackend`.

One engine task per backend (:meth:`SimBackend.run`, started in the simulator's nursery)
drives a :class:`~p2pserve.sim.batching.BatchScheduler` on trio's clock: it plans a step,
sleeps its duration, applies it and hands each request's new tokens to the generator that
asked for them. Under ``MockClock(autojump_threshold=0)`` a whole busy day of a server costs
one trio sleep per engine step, and fewer while only decoding (a step then covers every
iteration up to half the ``stream_interval``, cut short when a request arrives or leaves),
with no task per request or per token.

What a request costs comes from its body:

* ``body["p2pserve_sim"] = {"prompt_tokens": P, "output_tokens": O, "task": T}`` (what the
  simulator's workload sets): exactly ``P`` prompt tokens, an answer of ``O`` tokens
  (the length it would have uncapped); ``task`` chooses the quality (below);
* otherwise the prompt is estimated at 4 characters per token (OpenAI's rule of thumb),
  plus 4 tokens per chat message for the template, and the answer is
  ``default_output_tokens`` long;
* ``max_tokens`` (or ``max_completion_tokens``) caps the answer (``finish_reason:
  "length"``), and so does the context length; a prompt at or over the context length is
  refused (``BackendResponseError``, status 400), as vLLM refuses it.

Text: the answer is ``" tok"`` per token, the tokens of up to one ``stream_interval`` in one
:class:`~p2pserve.backends.base.TextDelta`. With ``quality`` set, its first token is a
marker instead, ``"[correct]"`` with probability ``quality`` and ``"[wrong]"`` otherwise,
drawn from ``derive(seed, "sim-quality", sha256(body))``: the same request gets the same
verdict from the same backend (seed), every time. :func:`judged_correct` reads it back.
With ``quality_class`` instead, every answer starts with that class's marker
(``[q=<class>]``, :func:`p2pserve.sim.judge.marker`), and the simulated judge draws the
verdict from the classes' latent strengths. Either marker is the answer's first token.

Continuation (``supports_continuation``): the text already delivered is one token per
whitespace-separated word (true of this backend's own text); those tokens count as extra
prompt tokens and come off the answer still to generate; the marker is not repeated.

Cancelling the generator (the user left) cancels the request in the scheduler at once,
freeing its KV cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, TextDelta
from p2pserve.errors import BackendResponseError, BackendUnavailable
from p2pserve.rng import derive
from p2pserve.sim.batching import BatchScheduler, Profile, Step, Tokens
from p2pserve.sim.judge import marker as class_marker

__all__ = ["CORRECT", "SIM_FIELD", "TOKEN_TEXT", "WRONG", "SimBackend", "SimRequest", "estimate_prompt_tokens", "judged_correct"]

SIM_FIELD = "p2pserve_sim"
"""The body field that gives a simulated request's exact lengths (and task)."""
TOKEN_TEXT = " tok"
"""The text of one generated token."""
CORRECT = "[correct]"
WRONG = "[wrong]"
CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4


def judged_correct(text: str) -> bool | None:
    """Whether an answer of a :class:`SimBackend` with ``quality`` is correct (None: no marker)."""
    head = text.lstrip()
    if head.startswith(CORRECT):
        return True
    if head.startswith(WRONG):
        return False
    return None


def _chars(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # chat content parts, or a completion's list of prompts
        return sum(_chars(part.get("text", "")) if isinstance(part, dict) else _chars(part) for part in content)
    return 0


def estimate_prompt_tokens(kind: Kind, body: Mapping[str, Any]) -> int:
    """Prompt tokens of a body without a ``p2pserve_sim`` field: characters / 4 (rounded up),
    plus 4 per chat message; token-id prompts count their ids. At least 1."""
    if kind == "chat":
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        chars = sum(_chars(m.get("content")) for m in messages if isinstance(m, dict))
        return max(1, math.ceil(chars / CHARS_PER_TOKEN) + CHAT_TOKENS_PER_MESSAGE * len(messages))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return max(1, sum(len(p) for p in prompt))
    return max(1, math.ceil(_chars(prompt) / CHARS_PER_TOKEN))


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True, slots=True)
class SimRequest:
    """What one ``generate`` call asks of the engine (:meth:`SimBackend.plan`)."""

    prompt_tokens: int
    """Including the continuation's tokens."""
    new_tokens: int
    """Tokens to generate now (0: the continuation already holds the whole answer)."""
    finish_reason: str
    """``"length"`` when max_tokens or the context cut the answer short, else ``"stop"``."""
    marker: str
    """The answer's first token when it carries a quality marker, else ``""``."""


class _Stream:
    """Hand-over between the engine task and one generator."""

    __slots__ = ("error", "finished", "last_wake", "pending", "wake")

    def __init__(self) -> None:
        self.pending = 0
        self.finished = False
        self.error: str | None = None
        self.wake: trio.Event | None = None
        self.last_wake = -math.inf

    def notify(self) -> None:
        if self.wake is not None:
            self.wake.set()
            self.wake = None


class SimBackend(Backend):
    """One simulated LLM server (module docstring). Start :meth:`run` in a nursery
    (``await nursery.start(backend.run)``); requests made before it starts wait for it.
    One run per backend: once it ends (cancelled, or :meth:`aclose`), the backend is closed.

    ``quality``: the probability an answer is correct, one number or one per
    ``p2pserve_sim.task`` (key ``"*"`` for the rest); ``None``: no marker. ``seed``: the
    marker draws' seed (give each simulated node its own for independent draws).
    ``quality_class``: start every answer with this quality class's marker instead (not
    with ``quality``).
    ``stream_interval``: virtual seconds a stream goes at most without a delta (unless one
    engine step is longer than half of it); the engine batches tokens and decode
    iterations up to it (0: one step per iteration, a delta per token). First and last
    tokens are always delivered at once. Deltas are what the node's network stack carries,
    so this is the simulator's main cost knob; TTFT and end-to-end times do not depend on it.
    """

    supports_continuation = True

    def __init__(
        self,
        profile: Profile,
        *,
        model: str | None = None,
        context_length: int | None = None,
        quality: float | Mapping[str, float] | None = None,
        quality_class: str | None = None,
        seed: int = 0,
        stream_interval: float = 1.0,
        default_output_tokens: int = 256,
    ) -> None:
        qualities = quality.values() if isinstance(quality, Mapping) else [] if quality is None else [quality]
        if any(not 0.0 <= q <= 1.0 for q in qualities):
            raise ValueError(f"quality must be within 0..1 (got {quality!r})")
        if quality is not None and quality_class is not None:
            raise ValueError("give quality or quality_class, not both")
        if not stream_interval >= 0 or default_output_tokens < 1:
            raise ValueError("stream_interval must be >= 0 and default_output_tokens >= 1")
        self.profile = profile
        self.model = model or profile.model
        self.context_length = context_length or profile.context_length
        self.max_concurrency = profile.max_batch
        self.quality = quality
        self.class_marker = class_marker(quality_class) if quality_class is not None else ""
        self.seed = seed
        self.stream_interval = stream_interval
        self.default_output_tokens = default_output_tokens
        self.scheduler = BatchScheduler(profile)
        self._streams: dict[int, _Stream] = {}
        self._ids = 0
        self._current: Step | None = None
        self._sleep: trio.CancelScope | None = None
        self._idle: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._closed = False

    # -- requests ----------------------------------------------------------------------

    def plan(self, kind: Kind, body: Mapping[str, Any], continuation: str = "") -> SimRequest:
        """How long the request ``body`` is and how its answer starts (pure; the module
        docstring's rules). Raises BackendResponseError (400) for a prompt too long."""
        sim = body.get(SIM_FIELD)
        sim = sim if isinstance(sim, Mapping) else {}
        prompt = _positive_int(sim.get("prompt_tokens")) or estimate_prompt_tokens(kind, body)
        answer = _positive_int(sim.get("output_tokens")) or self.default_output_tokens
        done = len(continuation.split())
        prompt += done
        if prompt >= self.context_length:
            raise BackendResponseError(f"prompt of {prompt} tokens is over the context length {self.context_length}",
                                       status_code=400)
        caps = [c for c in (_positive_int(body.get("max_tokens")), _positive_int(body.get("max_completion_tokens"))) if c]
        wanted = max(0, answer - done)
        new = min(wanted, *caps, self.context_length - prompt)
        marker = self._marker(body, sim.get("task")) if not continuation else ""
        return SimRequest(prompt, new, "length" if new < wanted else "stop", marker)

    def _marker(self, body: Mapping[str, Any], task: object) -> str:
        if self.class_marker:
            return self.class_marker
        quality = self.quality
        if isinstance(quality, Mapping):
            quality = quality.get(task, quality.get("*")) if isinstance(task, str) else quality.get("*")
        if quality is None:
            return ""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
        return CORRECT if derive(self.seed, "sim-quality", digest).random() < quality else WRONG

    async def generate(self, kind: Kind, body: dict[str, Any], *, continuation: str = "") -> AsyncIterator[GenerationEvent]:
        if self._closed:
            raise BackendUnavailable("the simulated server is closed")
        req = self.plan(kind, body, continuation)
        if req.new_tokens == 0:
            yield Finished(req.finish_reason, req.prompt_tokens, 0)
            return
        rid, stream = self._ids, _Stream()
        self._ids += 1
        try:
            self.scheduler.add(rid, req.prompt_tokens, req.new_tokens, req.new_tokens)
        except ValueError as exc:
            raise BackendResponseError(str(exc), status_code=400) from exc
        self._streams[rid] = stream
        self._changed()
        sent = 0
        try:
            while True:
                if stream.pending:
                    n, stream.pending = stream.pending, 0
                    head = req.marker + TOKEN_TEXT * (n - 1) if sent == 0 and req.marker else TOKEN_TEXT * n
                    sent += n
                    yield TextDelta(head)
                elif stream.finished:
                    break
                elif stream.error is not None:
                    raise BackendUnavailable(stream.error)
                else:
                    stream.wake = trio.Event()
                    await stream.wake.wait()
            yield Finished(req.finish_reason, req.prompt_tokens, sent)
        finally:
            del self._streams[rid]
            if self.scheduler.cancel(rid) and not self._closed:
                self._changed(cancelled=True)

    async def load(self) -> Load:
        q = self.scheduler.load()
        return Load(running=q.running, queued=q.waiting, token_usage=q.token_usage, source="metrics")

    # -- the engine --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The engine: runs until cancelled or :meth:`aclose`; then every waiting generator
        fails with BackendUnavailable."""
        if self._closed or self._scope is not None:
            raise BackendUnavailable("a simulated server runs once")
        try:
            with trio.CancelScope() as self._scope:
                task_status.started()
                await self._engine()
        finally:
            self._stop("the simulated server stopped")

    async def aclose(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self._stop("the simulated server was closed")

    def _stop(self, why: str) -> None:
        self._closed = True
        for stream in self._streams.values():
            stream.error = why
            stream.notify()

    async def _engine(self) -> None:
        sched = self.scheduler
        while True:
            now = trio.current_time()
            step = sched.next_step(now, now + self.stream_interval / 2 if self.stream_interval > 0 else None)
            if step is None:
                self._idle = trio.Event()
                await self._idle.wait()
                self._idle = None
                continue
            self._current = step
            with trio.CancelScope(deadline=step.end) as self._sleep:
                await trio.sleep_forever()
            step, self._current, self._sleep = self._current, None, None
            self._deliver(sched.finish_step(step), trio.current_time())

    def _changed(self, *, cancelled: bool = False) -> None:
        """A request arrived (or left): the engine must see it at the next iteration, so a
        multi-iteration step in flight ends with the iteration under way. A departure only
        matters when someone waits for the KV it freed."""
        if self._idle is not None:
            self._idle.set()
        step = self._current
        if step is None or step.iterations == 1 or (cancelled and self.scheduler.load().waiting == 0):
            return
        cut = self.scheduler.cut(step, trio.current_time())
        if cut is not step and self._sleep is not None:
            self._current = cut
            self._sleep.deadline = cut.end

    def _deliver(self, events: list[Tokens], now: float) -> None:
        """New tokens to their streams; wake a stream for its first and last tokens, and
        otherwise once half a ``stream_interval`` has passed since its last wake: with steps
        of at most half an interval, no stream then waits longer than one interval."""
        for ev in events:
            stream = self._streams.get(ev.req_id)
            if stream is None:
                continue
            stream.pending += ev.count
            stream.finished = ev.finished
            if ev.first or ev.finished or now - stream.last_wake >= self.stream_interval / 2:
                stream.last_wake = now
                stream.notify()
