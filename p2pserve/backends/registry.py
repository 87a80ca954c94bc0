"""Build a :class:`~p2pserve.backends.base.Backend` from a typed spec, by kind name.

This module owns :class:`BackendSpec` (the frozen, validated description of one backend,
built by the config loader from a YAML ``models[]`` entry) and :func:`build_backend`.
Implementations are imported lazily, so choosing ``openai`` never imports llama.cpp.

Kinds:

* ``openai``: any OpenAI-compatible server at ``base_url`` (vLLM, SGLang, llama.cpp's
  ``llama-server`` or ``llama_cpp.server``, Ollama, a fake in another process).
* ``embedded``: SmolLM2-135M-Instruct in-process (``model_path`` optional: the bundled GGUF).
* ``fake``: the deterministic fake, in-process through ``httpx.MockTransport`` (the same
  client code path as ``openai``); ``fake`` holds :class:`~p2pserve.backends.fake.FakeConfig`
  fields (its ``model`` defaults to the spec's served model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

import httpx

from p2pserve.backends.base import Backend
from p2pserve.errors import ConfigError

__all__ = ["BackendKind", "BackendSpec", "build_backend"]

BackendKind = Literal["openai", "embedded", "fake"]
_KINDS: tuple[str, ...] = get_args(BackendKind)


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One model behind one backend. Field names follow the YAML ``models[]`` entry."""

    model_path: str
    """The model's name in the network (``models[].model_path``)."""
    kind: BackendKind = "openai"
    base_url: str | None = None
    """Server root for ``openai`` (``http://127.0.0.1:8000``; requests go to ``/v1/...``)."""
    api_key: str | None = None
    """Bearer token sent to the server, if it wants one."""
    served_model: str | None = None
    """Name the server knows the model by, when it differs from ``model_path``."""
    gen_params: Mapping[str, Any] = field(default_factory=dict)
    """Defaults for keys a request lacks (``max_tokens``, ``temperature``, ``top_p``, ...)."""
    max_concurrency: int = 1
    """Requests the backend runs at once (its batch size for vLLM/SGLang)."""
    context_length: int | None = None
    """Context window in tokens; None: the backend's default (8192, or 2048 embedded)."""
    connect_timeout: float | None = 10.0
    first_byte_timeout: float | None = 60.0
    read_timeout: float | None = 60.0
    total_timeout: float | None = 600.0
    metrics: Literal["auto", "off"] = "auto"
    """``auto``: read load from ``/metrics`` when the server has it; ``off``: in-flight counts."""
    metrics_ttl: float = 0.5
    """How long one ``/metrics`` scrape is reused, in seconds."""
    continue_final_message: bool = True
    """Send vLLM/SGLang's ``continue_final_message`` when continuing a chat answer."""
    check_model: bool = True
    """Reject replies that name another model than ``served_model``."""
    max_connections: int = 64
    gguf_path: str | None = None
    """``embedded`` only: a GGUF to run instead of the bundled SmolLM2."""
    n_threads: int = 1
    """``embedded`` only: llama.cpp threads (1 is safest on small shared machines)."""
    seed: int = 0
    """``embedded`` only: sampling seed when a request has none."""
    fake: Mapping[str, Any] = field(default_factory=dict)
    """``fake`` only: :class:`~p2pserve.backends.fake.FakeConfig` fields."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"backend kind must be one of {', '.join(_KINDS)}, not {self.kind!r}")
        if not self.model_path:
            raise ConfigError("model_path (the model's network name) must not be empty")
        if self.kind == "openai" and not self.base_url:
            raise ConfigError(f"model {self.model_path!r}: base_url is required for an openai backend")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"model {self.model_path!r}: base_url must start with http:// or https://")
        if self.metrics not in ("auto", "off"):
            raise ConfigError(f"model {self.model_path!r}: metrics must be 'auto' or 'off'")
        if self.max_concurrency < 1 or (self.context_length or 1) < 1 or self.max_connections < 1 or self.n_threads < 1:
            raise ConfigError(f"model {self.model_path!r}: concurrency, context and thread counts must be >= 1")
        for name in ("connect_timeout", "first_byte_timeout", "read_timeout", "total_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"model {self.model_path!r}: {name} must be positive")
        if self.metrics_ttl < 0:
            raise ConfigError(f"model {self.model_path!r}: metrics_ttl must be >= 0")
        if not isinstance(self.gen_params, Mapping) or not isinstance(self.fake, Mapping):
            raise ConfigError(f"model {self.model_path!r}: gen_params and fake must be mappings")
        object.__setattr__(self, "gen_params", MappingProxyType(dict(self.gen_params)))
        object.__setattr__(self, "fake", MappingProxyType(dict(self.fake)))


def build_backend(spec: BackendSpec, *, transport: httpx.AsyncBaseTransport | None = None) -> Backend:
    """The backend ``spec`` describes. Nothing is connected or loaded yet (both are lazy).

    ``transport`` replaces the HTTP transport of ``openai`` and ``fake`` backends (tests:
    pass ``FakeBackend(...).mock_transport()`` to keep a handle on the fake's state). Raises
    :class:`ConfigError` for fake options that do not exist.
    """
    if spec.kind == "embedded":
        from p2pserve.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(
            spec.model_path, model_path=spec.gguf_path, n_ctx=spec.context_length or 2048, n_threads=spec.n_threads, seed=spec.seed, gen_params=spec.gen_params,
        )

    from p2pserve.backends.openai import OpenAIBackend, Timeouts

    base_url = spec.base_url
    if spec.kind == "fake":
        from p2pserve.backends.fake import FakeBackend, FakeConfig

        known = {f.name for f in fields(FakeConfig)}
        unknown = sorted(set(spec.fake) - known)
        if unknown:
            raise ConfigError(f"model {spec.model_path!r}: unknown fake options {unknown}; known: {sorted(known)}")
        try:
            fake_config = FakeConfig(**{"model": spec.served_model or spec.model_path, **spec.fake})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {spec.model_path!r}: bad fake options: {exc}") from exc
        transport = transport or FakeBackend(fake_config).mock_transport()
        base_url = base_url or "http://fake.invalid"
    assert base_url is not None
    return OpenAIBackend(
        spec.model_path,
        base_url,
        served_model=spec.served_model,
        api_key=spec.api_key,
        gen_params=spec.gen_params,
        timeouts=Timeouts(connect=spec.connect_timeout, first_byte=spec.first_byte_timeout,
                          read=spec.read_timeout, total=spec.total_timeout),
        max_connections=spec.max_connections,
        max_concurrency=spec.max_concurrency,
        context_length=spec.context_length or 8192,
        metrics=spec.metrics,
        metrics_ttl=spec.metrics_ttl,
        continue_final_message=spec.continue_final_message,
        check_model=spec.check_model,
        transport=transport,
    )
