"""The judging methods a judge node chooses by name, and the registry that builds them.

A method turns (question, answer A, answer B) into a :class:`~p2pserve.duel.judging.
JudgeResult`. The rules it applies (prompt, parse, order combination, margin) are the pure
functions of :mod:`p2pserve.duel.judging`; a method only adds the model calls, which are
injected, so every method runs in tests against scripted models:

* ``llm-pairwise`` (:class:`PairwiseJudge`): the judge's own chat model, asked in both
  orders with FastChat's prompt shape; a strict verdict token; disagreeing orders tie.
* ``reference-similarity`` (:class:`ReferenceSimilarityJudge`): the judge answers the
  question itself, then the answer closer to its own (MiniLM cosine) wins by a margin. The
  embedded network uses this one: a 135M model is at chance as a pairwise judge.
* ``fake`` (:class:`FakeJudge`): deterministic and model-free, for tests and the simulator.
* ``module:Class``: a provider's own method, imported by name.

Failures of the injected model (``BackendError``) propagate: the judge service decides
whether a judge that could not judge answers or stays silent. Nothing here retries.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import trio

from p2pserve.duel.judging import SIMILARITY_MARGIN, JudgeResult, pairwise_messages, parse_verdict, to_millionths
from p2pserve.errors import ConfigError

__all__ = [
    "METHODS",
    "Embedder",
    "FakeJudge",
    "Generate",
    "GenerateReference",
    "JudgeMethod",
    "PairwiseJudge",
    "ReferenceSimilarityJudge",
    "load_method",
]

Generate = Callable[[list[dict[str, str]]], Awaitable[str]]
"""The judge node's own chat model: OpenAI messages in, the whole answer out (greedy)."""

GenerateReference = Callable[[str], Awaitable[str]]
"""The judge node's own answer to a user question (greedy)."""


@runtime_checkable
class JudgeMethod(Protocol):
    """What the judge service calls. ``name`` is what :func:`load_method` was given; it is
    written into every result, so a verdict says how it was reached."""

    name: str

    async def judge(self, question: str, answer_a: str, answer_b: str) -> JudgeResult: ...


class Embedder(Protocol):
    """What :class:`ReferenceSimilarityJudge` needs of an embedder (CPU-bound, synchronous;
    :class:`~p2pserve.duel.similarity.MiniLMEmbedder` is the real one)."""

    def similarities(self, reference: str, texts: Sequence[str]) -> list[float]: ...


class PairwiseJudge:
    """``llm-pairwise``: the judge's model compares the answers in both orders.

    ``generate`` is asked ``pairwise_messages(q, a, b)`` and then ``pairwise_messages(q, b, a)``,
    one after the other (a judge's single model serves them in turn anyway, and a fixed order
    keeps the calls reproducible). Each output is parsed strictly; the result carries both
    per-order verdicts and their combination, so a model with a position bias only ties.
    """

    def __init__(self, generate: Generate, *, name: str = "llm-pairwise") -> None:
        self.name = name
        self._generate = generate

    async def judge(self, question: str, answer_a: str, answer_b: str) -> JudgeResult:
        first = parse_verdict(await self._generate(pairwise_messages(question, answer_a, answer_b)))
        swapped = parse_verdict(await self._generate(pairwise_messages(question, answer_b, answer_a)))
        return JudgeResult.from_orders(self.name, first, swapped)


class ReferenceSimilarityJudge:
    """``reference-similarity``: the answer closer in meaning to the judge's own answer wins.

    The judge answers the question itself (``generate_reference``), embeds its answer and
    both candidates, and scores each candidate by cosine to the reference. A wrong but
    on-topic answer still scores high, so only the difference counts: below ``margin``
    (millionths, :data:`~p2pserve.duel.judging.SIMILARITY_MARGIN`) it is a tie. Order plays
    no part: swapping A and B swaps the scores. The embedding is CPU-bound (about 12 ms for
    three sentences on one core), so it runs in a worker thread, off the event loop.

    Limit (``bench/judge_accuracy.py``): the score rewards wording as well as meaning. A
    wrong answer that repeats the reference's sentence with one fact swapped beats a right
    answer worded differently; the method separates right from wrong only when their
    wording is independent of the reference's.
    """

    def __init__(
        self,
        generate_reference: GenerateReference,
        embedder: Embedder,
        margin: int = SIMILARITY_MARGIN,
        *,
        name: str = "reference-similarity",
    ) -> None:
        if margin < 0:
            raise ConfigError(f"similarity margin must be >= 0 millionths, got {margin}")
        self.name = name
        self.margin = margin
        self._generate_reference = generate_reference
        self._embedder = embedder

    async def judge(self, question: str, answer_a: str, answer_b: str) -> JudgeResult:
        reference = await self._generate_reference(question)
        cosines = await trio.to_thread.run_sync(self._embedder.similarities, reference, [answer_a, answer_b])
        return JudgeResult.from_scores(self.name, to_millionths(cosines[0]), to_millionths(cosines[1]), self.margin)


_WORD_RE = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


class FakeJudge:
    """``fake``: prefers the answer made of words the question or a known vocabulary contains.

    An answer's score is the fraction of its words (lower-cased runs of letters and digits)
    found in the question or in ``vocabulary``, in millionths; an empty answer scores 0.
    The higher score wins, equal scores tie (margin 0). The default vocabulary is the fake
    backend's word list (:data:`p2pserve.backends.fake.plan.WORDS`), so the fake backend's
    own answers (its words, or the question's words for an ``echo:`` prompt) score 1 and
    beat "noise", words drawn from anywhere else. No model, no I/O, the same result for
    the same texts: a test can tell a correct executor from a noisy one.
    """

    def __init__(self, vocabulary: Iterable[str] | None = None, *, name: str = "fake") -> None:
        if vocabulary is None:
            # Imported here: the fake backend package also brings its HTTP adapters.
            from p2pserve.backends.fake.plan import WORDS

            vocabulary = WORDS
        self.name = name
        self._vocabulary = frozenset(w for word in vocabulary for w in _words(word))

    def score(self, question: str, answer: str) -> int:
        """The share of ``answer``'s words that are known, in millionths."""
        words = _words(answer)
        if not words:
            return 0
        known = self._vocabulary | set(_words(question))
        return to_millionths(sum(w in known for w in words) / len(words))

    async def judge(self, question: str, answer_a: str, answer_b: str) -> JudgeResult:
        return JudgeResult.from_scores(self.name, self.score(question, answer_a), self.score(question, answer_b), 0)


def _need(deps: Mapping[str, Any], key: str, method: str) -> Any:
    if deps.get(key) is None:
        raise ConfigError(f"judge method {method!r} needs {key!r}, which this node does not provide")
    return deps[key]


def _pairwise(deps: Mapping[str, Any]) -> JudgeMethod:
    return PairwiseJudge(_need(deps, "generate", "llm-pairwise"))


def _reference_similarity(deps: Mapping[str, Any]) -> JudgeMethod:
    embedder = deps.get("embedder")
    if embedder is None:
        from p2pserve.duel.similarity import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    margin = deps.get("margin")
    return ReferenceSimilarityJudge(
        _need(deps, "generate_reference", "reference-similarity"),
        embedder,
        SIMILARITY_MARGIN if margin is None else margin,
    )


def _fake(deps: Mapping[str, Any]) -> JudgeMethod:
    return FakeJudge(deps.get("vocabulary"))


METHODS: Mapping[str, Callable[[Mapping[str, Any]], JudgeMethod]] = {
    "fake": _fake,
    "llm-pairwise": _pairwise,
    "reference-similarity": _reference_similarity,
}
"""The built-in methods by name. Each factory takes the dependencies it needs and ignores
the rest; nothing heavy (the embedder) is built until its method is chosen."""


def load_method(name: str, **deps: Any) -> JudgeMethod:
    """The judging method called ``name``, built from the node's dependencies.

    ``deps`` are what a node can offer: ``generate`` (:data:`Generate`),
    ``generate_reference`` (:data:`GenerateReference`), ``embedder`` (an :class:`Embedder`;
    default: a :class:`~p2pserve.duel.similarity.MiniLMEmbedder`), ``margin`` (millionths),
    ``vocabulary`` (for ``fake``). A built-in method takes what it needs and ignores the
    rest. ``module:Class`` imports a provider's class and calls it with every dependency as
    a keyword argument (so it should accept ``**_``); its instance must be a
    :class:`JudgeMethod` whose ``judge`` is ``async``.

    Raises :class:`~p2pserve.errors.ConfigError` for an unknown name, a missing dependency,
    a class that cannot be imported or built, or one that is not a judging method.
    """
    if name in METHODS:
        return METHODS[name](deps)
    if ":" not in name:
        raise ConfigError(f"unknown judge method {name!r}: use one of {sorted(METHODS)} or 'module:Class'")
    return _load_provider(name, deps)


def _load_provider(name: str, deps: Mapping[str, Any]) -> JudgeMethod:
    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise ConfigError(f"judge method {name!r} is not of the form 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ConfigError(f"judge method {name!r}: cannot import {module_name!r}: {exc}") from exc
    except AttributeError as exc:
        raise ConfigError(f"judge method {name!r}: {module_name!r} has no {class_name!r}") from exc
    try:
        method = cls(**deps)
    except Exception as exc:
        raise ConfigError(f"judge method {name!r}: cannot be built: {type(exc).__name__}: {exc}") from exc
    if not isinstance(method, JudgeMethod) or not inspect.iscoroutinefunction(method.judge):
        raise ConfigError(f"judge method {name!r} is not a judging method (needs `name` and `async def judge`)")
    return method
