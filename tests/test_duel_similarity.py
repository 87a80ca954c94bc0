"""The real MiniLM embedder (p2pserve.duel.similarity) and reference-similarity judging on it.

These need onnxruntime, tokenizers, numpy and the two model packages. When they are missing
the tests fail (not skip) with the pip command: a judge that cannot judge must not pass CI
silently."""

from __future__ import annotations

import numpy as np
import pytest

from p2pserve.duel.judging import Winner
from p2pserve.duel.methods import ReferenceSimilarityJudge, load_method
from p2pserve.duel.similarity import DIMENSIONS, MiniLMEmbedder, cosine
from p2pserve.errors import ConfigError


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    try:
        return MiniLMEmbedder()
    except ConfigError as exc:
        pytest.fail(f"MiniLM judge packages missing: {exc}", pytrace=False)


REFERENCE = "The capital of France is Paris."


def test_paraphrase_beats_wrong_fact_beats_off_topic(embedder: MiniLMEmbedder) -> None:
    paraphrase, wrong, off_topic = embedder.similarities(
        REFERENCE, ["Paris is the capital city of France.", "The capital of France is Berlin.", "I enjoy playing the guitar on weekends."]
    )
    assert paraphrase > 0.9
    assert paraphrase - wrong > 0.1
    assert wrong - off_topic > 0.3


def test_vectors_are_unit_length_and_deterministic(embedder: MiniLMEmbedder) -> None:
    texts = ["Spiders have eight legs.", "", "A longer sentence about the water cycle, evaporation and rain. " * 3]
    first = embedder.embed(texts)
    assert first.shape == (3, DIMENSIONS) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, embedder.embed(texts))  # bit-identical, same texts
    alone = np.vstack([embedder.embed([t]) for t in texts])
    assert np.allclose(first, alone, atol=1e-6)  # padding in a batch changes nothing
    assert embedder.embed([]).shape == (0, DIMENSIONS)
    assert cosine(first[0], first[0]) == pytest.approx(1.0, abs=1e-6)
    assert cosine(first[0], np.zeros(DIMENSIONS, dtype=np.float32)) == 0.0


def test_long_texts_are_truncated_not_refused(embedder: MiniLMEmbedder) -> None:
    long = "word " * 5000
    assert embedder.embed([long]).shape == (1, DIMENSIONS)


# (question, the judge's own reference answer, a right answer, a wrong answer). The wrong
# answers are worded on their own: a wrong answer that copies the reference's wording with
# one fact swapped fools MiniLM (bench/judge_accuracy.py, group "mimic").
PAIRS = [
    ("How many legs does a spider have?", "A spider has eight legs.", "Spiders have eight legs.",
     "Most spiders walk on six legs, like insects."),
    ("What is the capital of France?", REFERENCE, "Paris is the capital of France.", "France's seat of government is Lyon."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.", "Gold's chemical symbol is Au.",
     "Gold is written Ag on the periodic table."),
    ("What does the heart do?", "The heart pumps blood through the body.", "The heart's job is to pump blood around the body.",
     "The heart digests the food we eat."),
]


async def test_reference_similarity_judge_picks_the_right_answer(embedder: MiniLMEmbedder) -> None:
    references = {q: ref for q, ref, _, _ in PAIRS}

    async def reference(question: str) -> str:
        return references[question]

    judge = ReferenceSimilarityJudge(reference, embedder)
    for question, _, right, wrong in PAIRS:
        as_a = await judge.judge(question, right, wrong)
        as_b = await judge.judge(question, wrong, right)
        assert (as_a.winner, as_b.winner) == (Winner.A, Winner.B), (question, as_a.scores)
        assert as_b.scores == as_a.scores[::-1]  # order plays no part
        assert as_a == await judge.judge(question, right, wrong)  # same scores twice
    same = await judge.judge(PAIRS[0][0], PAIRS[0][2], PAIRS[0][2])
    assert same.winner is Winner.TIE


async def test_registry_builds_the_real_embedder_by_default() -> None:
    async def reference(question: str) -> str:
        return REFERENCE

    method = load_method("reference-similarity", generate_reference=reference)
    result = await method.judge("Capital of France?", "The capital of France is Berlin.", "Paris is the capital of France.")
    assert result.winner is Winner.B and result.method == "reference-similarity"
