"""How well, and how fast, the ``reference-similarity`` judge tells a right answer from a wrong one.

A small hand-made set of (question, the judge's own reference answer, a right answer, a wrong
answer), in two groups:
  * ``distinct``: the wrong answer is worded on its own (what an unrelated or careless
    executor writes);
  * ``mimic``: the wrong answer is the reference's sentence with one fact swapped (the hard
    case for an embedding: same words, different truth).
Each item is judged in both orders (right as A, then as B) through the real
``ReferenceSimilarityJudge`` on the real MiniLM embedder, with the reference scripted, so
only the embedding judges. Printed: accuracy (ties count as misses), wrong picks and ties,
the mean margin cos(right, ref) - cos(wrong, ref) per group; the embedder's import+load
time and peak RSS; sentences/s and judgements/s (3 sentences per judgement).
Run: ``.venv/bin/python bench/judge_accuracy.py [--threads 1] [--repeat 20] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from p2pserve.duel.judging import SCORE_SCALE, Winner  # noqa: E402
from p2pserve.duel.methods import ReferenceSimilarityJudge  # noqa: E402

# (group, question, reference, right, wrong)
ITEMS: list[tuple[str, str, str, str, str]] = [
    ("distinct", "How many legs does a spider have?", "A spider has eight legs.",
     "Spiders have eight legs.", "Most spiders walk on six legs, like insects."),
    ("distinct", "What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level.",
     "At sea level, water boils at 100 degrees Celsius.", "It boils at around 50 °C when you are near the ocean."),
    ("distinct", "What is the capital of France?", "The capital of France is Paris.",
     "Paris is the capital of France.", "France's seat of government is Lyon."),
    ("distinct", "What is the chemical symbol for gold?", "The chemical symbol for gold is Au.",
     "Gold's chemical symbol is Au.", "Gold is written Ag on the periodic table."),
    ("distinct", "What does the heart do?", "The heart pumps blood through the body.",
     "The heart's job is to pump blood around the body.", "The heart digests the food we eat."),
    ("distinct", "What is the highest mountain on Earth?", "Mount Everest is the highest mountain on Earth.",
     "The tallest mountain above sea level is Everest.", "Kilimanjaro, in Tanzania, is the highest peak in the world."),
    ("distinct", "Which is the largest ocean?", "The Pacific Ocean is the largest ocean on Earth.",
     "The largest ocean is the Pacific.", "The Atlantic covers more of the planet than any other ocean."),
    ("distinct", "What is photosynthesis?", "Photosynthesis converts light energy into chemical energy stored in sugar.",
     "Plants use sunlight to make sugar, storing the energy chemically.", "Photosynthesis is how animals digest food."),
    ("mimic", "What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level.",
     "At sea level water boils at 100 °C.", "Water boils at 50 degrees Celsius at sea level."),
    ("mimic", "How long does sunlight take to reach Earth?", "Light from the Sun takes about eight minutes to reach Earth.",
     "Sunlight reaches Earth in roughly 8 minutes.", "Light from the Sun takes about eight hours to reach Earth."),
    ("mimic", "Which Python sequences are mutable, lists or tuples?", "Python lists are mutable, tuples are immutable.",
     "A list can be changed after creation; a tuple cannot.", "Python tuples are mutable, lists are immutable."),
    ("mimic", "Who formulated the laws of motion?", "Isaac Newton formulated the laws of motion.",
     "Newton came up with the three laws of motion.", "Albert Einstein formulated the laws of motion."),
]


def load_embedder(threads: int) -> tuple[Any, float]:
    """The real embedder and the seconds its import and model load took."""
    t0 = time.perf_counter()
    from p2pserve.duel.similarity import MiniLMEmbedder

    embedder = MiniLMEmbedder(threads=threads)
    return embedder, time.perf_counter() - t0


async def accuracy(embedder: Any) -> dict[str, dict[str, float]]:
    """Per group: judgements, right picks, wrong picks, ties, mean margin (both orders)."""
    out: dict[str, dict[str, float]] = {}
    for group in sorted({g for g, *_ in ITEMS}):
        right_picks = wrong_picks = ties = 0
        margins = []
        for g, question, reference, right, wrong in ITEMS:
            if g != group:
                continue

            async def answer(_: str, reference: str = reference) -> str:
                return reference

            judge = ReferenceSimilarityJudge(answer, embedder)
            first = await judge.judge(question, right, wrong)
            second = await judge.judge(question, wrong, right)
            for result, right_is in ((first, Winner.A), (second, Winner.B)):
                right_picks += result.winner is right_is
                ties += result.winner is Winner.TIE
                wrong_picks += result.winner not in (right_is, Winner.TIE)
            assert len(first.scores) == 2
            margins.append((first.scores[0] - first.scores[1]) / SCORE_SCALE)
        n = right_picks + wrong_picks + ties
        out[group] = {"judgements": n, "right": right_picks, "wrong": wrong_picks, "ties": ties,
                      "accuracy": right_picks / n, "mean_margin": statistics.fmean(margins)}
    return out


def speed(embedder: Any, repeat: int) -> dict[str, float]:
    """Sentences/s and judgements/s, embedding [reference, a, b] per call as the judge does."""
    triples = [[ref, right, wrong] for _, _, ref, right, wrong in ITEMS]
    t0 = time.perf_counter()
    for _ in range(repeat):
        for triple in triples:
            embedder.embed(triple)
    elapsed = time.perf_counter() - t0
    calls = repeat * len(triples)
    return {"sentences_per_s": 3 * calls / elapsed, "judgements_per_s": calls / elapsed, "ms_per_judgement": 1000 * elapsed / calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1, the judge's default)")
    parser.add_argument("--repeat", type=int, default=20, help="passes over the set for the speed measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    embedder, load_s = load_embedder(args.threads)
    groups = trio.run(accuracy, embedder)
    rates = speed(embedder, args.repeat)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = {k: sum(g[k] for g in groups.values()) for k in ("judgements", "right", "wrong", "ties")}
    if args.json:
        print(json.dumps({"groups": groups, "total": total, "load_s": load_s, "peak_rss_mb": rss_mb, **rates}, indent=2))
        return
    print(f"reference-similarity (all-MiniLM-L6-v2 int8, onnxruntime, {args.threads} thread(s)), margin 0.02")
    for name, g in groups.items():
        print(f"  {name:9s} accuracy {g['right']:.0f}/{g['judgements']:.0f} = {g['accuracy']:.0%}"
              f"  (wrong {g['wrong']:.0f}, ties {g['ties']:.0f})  mean margin {g['mean_margin']:+.3f}")
    print(f"  all       accuracy {total['right']}/{total['judgements']} = {total['right'] / total['judgements']:.0%}")
    print(f"load (import + model) {load_s:.2f} s, peak RSS {rss_mb:.0f} MB")
    print(f"speed {rates['sentences_per_s']:.0f} sentences/s, {rates['judgements_per_s']:.0f} judgements/s"
          f" ({rates['ms_per_judgement']:.1f} ms each, embedding only)")


if __name__ == "__main__":
    main()
