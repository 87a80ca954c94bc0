"""The fake backend's pure core: what a request is answered with, and the ``/metrics`` text.

A request body becomes a :class:`Plan` (text pieces, one per token, finish reason, usage,
id) that depends only on the canonical request: same request, byte-identical answer.
:func:`response_body` and :func:`stream_chunks` give its OpenAI shapes (from
:mod:`p2pserve.backends.openai_format`); :func:`render_metrics` a server's ``/metrics`` in
vLLM's, SGLang's or llama.cpp's names. No I/O, no clock.

Content rule. ``h = sha256(canonical_json({model, messages | prompt, seed}))``; the answer
has ``8 + h[0] % 24`` words taken from :data:`WORDS` by ``h[1:]``, cut to ``max_tokens``
(``finish_reason`` is ``"length"`` when the cut shortened it, else ``"stop"``). A last user
message (or prompt) starting with ``echo:`` is answered with its own text instead.
``max_tokens`` is not hashed, so a shorter request gives a prefix of a longer one, and a
continuation (chat: a final assistant message; completions: the prompt followed by the
first words of its own word answer) yields exactly the rest of the original answer. (A
completions prompt that happens to end in words of :data:`WORDS` is read as a
continuation when they match its base's answer: about 1 chance in 64 per such word.) That makes
mid-stream fail-over testable end to end.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from p2pserve.backends.base import Kind
from p2pserve.backends.openai_format import (
    chat_messages,
    chunk_object,
    completion_object,
    prompt_text,
    usage,
    usage_chunk,
)
from p2pserve.errors import BadRequest

__all__ = [
    "ANSWERS",
    "DIALECTS",
    "NOISE_WORDS",
    "WORDS",
    "Answers",
    "Dialect",
    "FakeRequestError",
    "Plan",
    "Snapshot",
    "plan_request",
    "render_metrics",
    "response_body",
    "stream_chunks",
]

Dialect = Literal["vllm", "sglang", "llamacpp", "none"]
DIALECTS: tuple[Dialect, ...] = get_args(Dialect)

WORDS: tuple[str, ...] = tuple(
    """alpha amber apple arrow atlas autumn badge basil beacon birch bloom breeze bridge
    canyon cedar cinder clover comet copper coral cosmos crystal delta dune ember falcon
    fern fjord forest garnet glacier harbor hazel horizon island ivory jasper lagoon
    lantern lotus maple meadow meteor nebula oasis ocean orbit pebble pine prairie quartz
    raven river saffron sierra summit thistle timber tundra valley violet willow yarrow zephyr""".split()
)
assert len(WORDS) == 64

NOISE_WORDS: tuple[str, ...] = tuple(
    """blorf cranth dwizzle flumox grebnak hoxile jirvo klemp lunzor mibble nurfle opzak
    plinth quorble rastik snerve trabble uvok vintle wuxor yibble zantoph""".split()
)
"""The vocabulary of ``answers: noise``: words found in no prompt and in no :data:`WORDS`
answer, so a judge (even the fake one) can tell noise from an answer."""

Answers = Literal["words", "noise"]
ANSWERS: tuple[Answers, ...] = get_args(Answers)

_ECHO = "echo:"
_DEFAULT_MAX_TOKENS = 64
_PIECE_RE = re.compile(r"\s*\S+")


class FakeRequestError(Exception):
    """The request is invalid; answered as an OpenAI-style error with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Plan:
    """What one generation request produces. ``pieces`` are the output tokens' texts."""

    kind: Kind
    id: str
    model: str
    pieces: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.completion_tokens)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _words_pieces(digest: bytes, *, leading_space: bool) -> list[str]:
    n = 8 + digest[0] % 24
    words = [WORDS[b % len(WORDS)] for b in digest[1 : 1 + n]]
    return [(" " if (leading_space or i) else "") + w for i, w in enumerate(words)]


def _answer(kind: Kind, model: str, source: object, seed: int) -> list[str]:
    """The full natural answer (as pieces) to ``source`` (messages list or prompt string)."""
    last = source if isinstance(source, str) else _last_user(source)
    if last.lstrip().startswith(_ECHO):
        return _PIECE_RE.findall(last.lstrip()[len(_ECHO):].strip())
    digest = hashlib.sha256(_canonical({"model": model, "input": source, "seed": seed})).digest()
    return _words_pieces(digest, leading_space=kind == "completion")


def _noise(kind: Kind, model: str, source: object, seed: int) -> list[str]:
    """8-23 words of :data:`NOISE_WORDS`, picked by the request's hash (the prompt is ignored)."""
    h = hashlib.sha256(_canonical({"noise": model, "input": source, "seed": seed})).digest()
    return [(" " if (kind == "completion" or i) else "") + NOISE_WORDS[b % len(NOISE_WORDS)] for i, b in enumerate(h[1 : 9 + h[0] % 16])]


def _last_user(messages: object) -> str:
    assert isinstance(messages, list)
    for m in reversed(messages):
        if m["role"] == "user":
            return str(m["content"])
    return ""


def _rest_after(pieces: list[str], prefix: str) -> list[str] | None:
    """What of ``pieces`` follows ``prefix``, or None if they do not start with it.

    A prefix that ends inside a piece leaves the rest of that piece as the first one.
    """
    done = 0
    for i, p in enumerate(pieces):
        left = prefix[done:]
        if not left:
            return pieces[i:]
        if left.startswith(p):
            done += len(p)
        elif p.startswith(left):
            return [p[len(left):], *pieces[i + 1 :]]
        else:
            return None
    return [] if done == len(prefix) else None


def _continued(kind: Kind, model: str, source: object, seed: int) -> list[str] | None:
    """The rest of an earlier answer if ``source`` continues it, else None."""
    if kind == "chat":
        assert isinstance(source, list)
        if len(source) < 2 or source[-1]["role"] != "assistant" or not source[-1]["content"]:
            return None
        return _rest_after(_answer(kind, model, source[:-1], seed), source[-1]["content"])
    assert isinstance(source, str)
    for base, tail in _splits(source):
        rest = _rest_after(_answer(kind, model, base, seed), tail)
        if rest is not None:
            return rest
    return None


def _splits(prompt: str) -> list[tuple[str, str]]:
    """Candidate (base, tail) splits of a completions prompt, shortest tail first.

    The tail is 1..31 whole `` word`` pieces from :data:`WORDS` (echo answers are not
    continued for completions: where an echoed prompt ends is ambiguous).
    """
    out: list[tuple[str, str]] = []
    pieces = _PIECE_RE.findall(prompt[-32 * 16 :])
    tail = ""
    for piece in reversed(pieces[1:][-31:]):
        if piece[:1] != " " or piece[1:2].isspace() or piece[1:] not in WORDS:
            break
        tail = piece + tail
        out.append((prompt[: len(prompt) - len(tail)], tail))
    return out


def _count_words(source: object) -> int:
    if isinstance(source, str):
        return len(source.split())
    assert isinstance(source, list)
    return sum(len(m["content"].split()) for m in source)


def plan_request(kind: Kind, body: Mapping[str, Any], *, model: str, seed: int = 0, answers: Answers = "words") -> Plan:
    """The deterministic answer to one request body (see the module docstring). With
    ``answers="noise"`` the answer is words of :data:`NOISE_WORDS` that have nothing to do
    with the prompt (a bad model, for duel tests); they too depend only on the request.

    Raises :class:`FakeRequestError` (400) for an invalid body and (404) for another model.
    """
    if body.get("model", model) != model:
        raise FakeRequestError(404, f"The model `{body.get('model')}` does not exist.")
    try:
        source: object = chat_messages(body) if kind == "chat" else prompt_text(body)
    except BadRequest as exc:
        raise FakeRequestError(400, str(exc)) from exc
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", _DEFAULT_MAX_TOKENS))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise FakeRequestError(400, "'max_tokens' must be a positive integer")
    req_seed = body.get("seed", seed)
    if not isinstance(req_seed, int) or isinstance(req_seed, bool):
        raise FakeRequestError(400, "'seed' must be an integer")
    rest = _noise(kind, model, source, req_seed) if answers == "noise" else _continued(kind, model, source, req_seed)
    if rest is None:
        rest = _answer(kind, model, source, req_seed)
    pieces = rest[:max_tokens]
    finish = "length" if len(rest) > max_tokens else "stop"
    digest = hashlib.sha256(_canonical({"kind": kind, "body": dict(body)})).hexdigest()
    stream_options = body.get("stream_options")
    return Plan(
        kind=kind,
        id=("chatcmpl-" if kind == "chat" else "cmpl-") + digest[:24],
        model=model,
        pieces=tuple(pieces),
        finish_reason=finish,
        prompt_tokens=_count_words(source),
        stream=bool(body.get("stream", False)),
        include_usage=isinstance(stream_options, dict) and bool(stream_options.get("include_usage")),
    )


def response_body(plan: Plan, *, created: int = 0, model: str | None = None) -> dict[str, Any]:
    """The non-streaming OpenAI response for ``plan`` (``model`` overrides the reported name)."""
    return completion_object(plan.kind, plan.id, created, model or plan.model, plan.text, plan.finish_reason, plan.usage())


def stream_chunks(plan: Plan, *, created: int = 0, model: str | None = None) -> list[dict[str, Any]]:
    """The SSE chunk objects for ``plan``, in order, without the final ``[DONE]``.

    Chat: a role chunk, one chunk per piece, a chunk with ``finish_reason``. Completions: one
    chunk per piece, then the ``finish_reason`` chunk. Then a usage chunk (empty
    ``choices``) when ``stream_options.include_usage`` was asked for, as vLLM sends it.
    """
    head = (plan.kind, plan.id, created, model or plan.model)
    chunks = [chunk_object(*head, text="", role=True)] if plan.kind == "chat" else []
    chunks += [chunk_object(*head, text=p) for p in plan.pieces]
    chunks.append(chunk_object(*head, finish=plan.finish_reason))
    if plan.include_usage:
        chunks.append(usage_chunk(*head, plan.usage()))
    return chunks


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fake's gauges and counters at one moment."""

    running: int = 0
    waiting: int = 0
    kv_tokens: int = 0
    kv_tokens_total: int = 1
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    requests_total: int = 0

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_tokens / self.kv_tokens_total)


def render_metrics(dialect: Dialect, model: str, snap: Snapshot) -> str:
    """``/metrics`` text in ``dialect``'s names (see ``docs/notes-backends.md``, "Backend metrics")."""
    if dialect == "vllm":
        labels = f'{{model_name="{model}",engine="0"}}'
        rows = [("vllm:num_requests_running", "gauge", snap.running),
                ("vllm:num_requests_waiting", "gauge", snap.waiting),
                ("vllm:kv_cache_usage_perc", "gauge", snap.kv_usage),
                ("vllm:prompt_tokens_total", "counter", snap.prompt_tokens_total),
                ("vllm:generation_tokens_total", "counter", snap.generation_tokens_total)]
    elif dialect == "sglang":
        labels = f'{{model_name="{model}"}}'
        rows = [("sglang:num_running_reqs", "gauge", snap.running),
                ("sglang:num_queue_reqs", "gauge", snap.waiting),
                ("sglang:token_usage", "gauge", snap.kv_usage),
                ("sglang:num_used_tokens", "gauge", snap.kv_tokens),
                ("sglang:prompt_tokens_total", "counter", snap.prompt_tokens_total),
                ("sglang:generation_tokens_total", "counter", snap.generation_tokens_total)]
    elif dialect == "llamacpp":
        labels = ""
        rows = [("llamacpp:requests_processing", "gauge", snap.running),
                ("llamacpp:requests_deferred", "gauge", snap.waiting),
                ("llamacpp:prompt_tokens_total", "counter", snap.prompt_tokens_total),
                ("llamacpp:tokens_predicted_total", "counter", snap.generation_tokens_total)]
    else:
        return ""
    lines: list[str] = []
    for name, kind, value in rows:
        family = name.removesuffix("_total") if kind == "counter" else name
        lines += [f"# TYPE {family} {kind}", f"{name}{labels} {float(value)!r}"]
    return "\n".join(lines) + "\n"
