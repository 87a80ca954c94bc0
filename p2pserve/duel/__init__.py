"""Duel and judge (``docs/notes-duel.md``): a sample of offloaded requests is answered by two executors
and a third node judges which answer is better.

The judging layer, from pure to I/O (nothing is imported here, so ``import p2pserve.duel``
is free):

* :mod:`.judging`: the judge's rules, pure: the pairwise prompt, the strict verdict parse,
  the two-order combination, the similarity margin, and :class:`~.judging.JudgeResult`;
* :mod:`.methods`: the judging methods a judge node chooses by name (``llm-pairwise``,
  ``reference-similarity``, ``fake`` or a provider's ``module:Class``), each one async
  around an injected model;
* :mod:`.similarity`: the all-MiniLM-L6-v2 embedder on onnxruntime that
  ``reference-similarity`` compares answers with (its heavy imports happen on first use).

The rest of the package (the judge draw, the ratings, the duel's state machine, its
coordinator and the judge service on ``/p2pserve/judge/1``) builds on these.
"""
