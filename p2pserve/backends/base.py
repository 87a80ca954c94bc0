"""The backend interface: one small contract for every LLM backend a node fronts.

A backend turns an OpenAI-style request body into a stream of :class:`TextDelta` events
ended by exactly one :class:`Finished`, and reports its :class:`Load`. The API layer builds
OpenAI response and SSE chunk shapes from these events, so every backend (vLLM, SGLang,
llama.cpp server, Ollama, the embedded model, the fake) looks the same to the node.

Errors are :class:`p2pserve.errors.BackendError` subclasses, never httpx or llama.cpp ones.
This module is an interface only (no I/O).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Backend", "Finished", "GenerationEvent", "Kind", "Load", "LoadSource", "TextDelta"]

Kind = Literal["chat", "completion"]
LoadSource = Literal["metrics", "inflight", "unknown"]


@dataclass(frozen=True, slots=True)
class Load:
    """A backend's load as last observed.

    ``source`` says where it came from: ``"metrics"`` (the backend's Prometheus
    ``/metrics``), ``"inflight"`` (the backend exposes no metrics, so the node's own count
    of requests it sent is the truth), or ``"unknown"`` (metrics exist but could not be
    read: policies must treat this as busy, never idle). ``token_usage`` is KV-cache usage
    0..1 when the backend reports it.
    """

    running: int = 0
    queued: int = 0
    token_usage: float | None = None
    source: LoadSource = "unknown"

    @property
    def known(self) -> bool:
        return self.source != "unknown"


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Generated text, in order. One per token event of the backend: callers count them."""

    text: str
    more: bool = field(default=False, compare=False)
    """Another delta follows at once, from the same read of the backend's stream: a consumer
    that writes to a socket may hold this one for it (one write per read, not per token).
    Never set on the last delta of a read, so holding never waits on the network."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a generation; always the last event."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = TextDelta | Finished


class Backend(abc.ABC):
    """One model served by one backend.

    ``model`` is the name the network knows it by (``models[].model_path`` in config).
    ``max_concurrency`` is how many requests the backend runs at once (1 for the embedded
    model and llama_cpp.server; the backend's batch capacity for vLLM/SGLang), used when
    load comes from in-flight counts.
    """

    model: str
    context_length: int = 8192
    max_concurrency: int = 1
    supports_continuation: bool = False
    """Whether ``generate(..., continuation=text)`` continues ``text`` rather than restarting."""
    load_over_network: bool = False
    """Whether :meth:`load` may wait on a request to the backend (an HTTP server's
    ``/metrics``). An executor then decides on an offer from the load its node read last
    (at most one load interval old, less the requests that ended since) instead of making
    the offer wait for a scrape; an in-process backend's load is exact and free, and is
    read at each offer."""

    @abc.abstractmethod
    def generate(self, kind: Kind, body: dict[str, Any], *, continuation: str = "") -> AsyncIterator[GenerationEvent]:
        """Run one request; yield TextDelta events then exactly one Finished.

        ``body`` is the OpenAI request body (``messages`` for chat, ``prompt`` for
        completions; ``max_tokens``, ``temperature``, ... as given). ``continuation`` is
        text already delivered to the user that the answer must continue from. Raises a
        BackendError subclass; cancelling the iteration cancels the backend request.
        """

    @abc.abstractmethod
    async def load(self) -> Load:
        """The current load (cheap; may be cached for a short time)."""

    async def check(self) -> None:  # noqa: B027 - optional hook: in-process backends are up while they exist
        """Raise a BackendError if the backend cannot serve now (cheap; may be cached)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections/processes. Idempotent."""
