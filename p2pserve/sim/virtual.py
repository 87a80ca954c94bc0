"""Running many nodes in one process in virtual time, deterministically.

:func:`run_virtual` runs an async function under trio's ``MockClock`` with
``autojump_threshold=0`` (time jumps to the next deadline whenever every task waits), after
seeding the one source of randomness that trio itself owns: the order in which it runs the
tasks that became runnable at the same moment (trio shuffles each batch on purpose,
``trio/_core/_run.py``). Everything else a run draws comes from p2pserve's seeded streams
(:mod:`p2pserve.rng`), and node code iterates peers, models and queues in sorted or
insertion order, never in set or hash order; so the same scenario and seed give the same
run, in one process or two, whatever ``PYTHONHASHSEED`` is.

Two details of trio make this work, both what trio's own Hypothesis plugin sets up
(``trio._core._run``): the scheduler's ``Random`` (seeded here), and its deterministic mode,
which sorts each batch of runnable tasks by creation order before shuffling it (without
it, tasks whose deadlines expire at the same virtual instant wake in ``id()`` order,
i.e. memory layout, which differs between processes). Both are private, so
:func:`seed_trio_scheduler` checks they exist and fails loudly if a trio release drops them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
import trio.testing

__all__ = ["run_virtual", "seed_trio_scheduler"]

T = TypeVar("T")


def seed_trio_scheduler(seed: int) -> None:
    """Make trio's scheduling order a function of ``seed`` (see the module docstring)."""
    from trio._core import _run  # private: what trio's own Hypothesis plugin sets up

    r = getattr(_run, "_r", None)
    if not isinstance(r, random.Random) or not hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        raise RuntimeError(  # pragma: no cover - guards a trio upgrade
            f"trio {getattr(trio, '__version__', '?')} has no deterministic scheduling hook (trio._core._run._r)"
        )
    # Sort each batch of runnable tasks by creation order before the (seeded) shuffle: the
    # order trio wakes tasks whose deadlines expire together follows id() (memory layout).
    _run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    r.seed(seed)


def run_virtual(fn: Callable[[], Awaitable[T]], *, seed: int) -> T:
    """``fn()`` under a virtual clock with a seeded scheduler (deterministic for a seed)."""
    seed_trio_scheduler(seed)
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))
