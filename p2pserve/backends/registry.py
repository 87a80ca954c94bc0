"""Build a :class:`~p2pserve.backends.base.Backend` from a typed spec, by kind name.

This module owns :class:`BackendSpec`, the frozen, validated description of one local model
behind one backend. It is the node config's ``models[]`` entry: :mod:`p2pserve.config` loads
one per YAML entry (its YAML names are mapped to these fields there, in one table), and
:func:`build_backend` turns one into a backend. Implementations are imported lazily, so
choosing ``openai`` never imports llama.cpp, and this module imports no I/O library.

Kinds:

* ``openai``: any OpenAI-compatible server at ``base_url`` (vLLM, SGLang, llama.cpp's
  ``llama-server`` or ``llama_cpp.server``, Ollama, a fake in another process).
* ``embedded``: SmolLM2-135M-Instruct in-process (``model_path`` optional: the bundled GGUF).
* ``fake``: the deterministic fake, in-process through ``httpx.MockTransport`` (the same
  client code path as ``openai``); ``fake`` holds :class:`~p2pserve.backends.fake.FakeConfig`
  fields (its ``model`` defaults to the spec's served model).

Validation raises :class:`~p2pserve.errors.ConfigError` whose message starts with the
field's name (``"base_url: ..."``), so the config loader can name the YAML key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, get_args

from p2pserve.backends.base import Backend
from p2pserve.errors import ConfigError
from p2pserve.policies import DispatchParams

if TYPE_CHECKING:
    import httpx

__all__ = ["EMBEDDED_MODEL", "BackendKind", "BackendSpec", "build_backend"]

BackendKind = Literal["openai", "embedded", "fake"]
_KINDS: tuple[str, ...] = get_args(BackendKind)

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Network name of the bundled SmolLM2-135M-Instruct that the ``embedded`` kind runs by default
(:data:`p2pserve.backends.embedded.MODEL_NAME`; defined here so that config stays free of trio)."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One model behind one backend: the config's ``models[]`` entry.

    Field names follow the YAML entry except where :mod:`p2pserve.config` maps them (YAML
    ``backend`` is :attr:`kind`, ``backend_model`` is :attr:`served_model`, ``timeout`` sets
    :attr:`first_byte_timeout` and :attr:`read_timeout`, ``dispatch_params.max_concurrency``
    sets :attr:`max_concurrency`).
    """

    model_path: str
    """The model's name in the network (``models[].model_path``): what clients put in ``model``."""
    kind: BackendKind = "openai"
    """``openai`` (vLLM, SGLang, llama.cpp server, Ollama, any /v1 server), ``embedded`` or ``fake``."""
    base_url: str | None = None
    """Server root for ``openai`` (``http://127.0.0.1:8000``; requests go to ``/v1/...``, load
    is read from ``/metrics``)."""
    api_key: str | None = None
    """Bearer token sent to the server, if it wants one."""
    served_model: str | None = None
    """Name the server knows the model by, when it differs from ``model_path``."""
    gen_params: Mapping[str, Any] = field(default_factory=dict)
    """Defaults for keys a request lacks (``max_tokens``, ``temperature``, ``top_p``, ...)."""
    dispatch_params: DispatchParams = field(default_factory=DispatchParams)
    """How the node's dispatch policy treats this model (idle threshold, concurrency)."""
    price_per_1k: float = 1.0
    """Credits charged per 1000 output tokens when serving peers."""
    max_concurrency: int = 1
    """Requests the backend runs at once (its batch size for vLLM/SGLang)."""
    context_length: int | None = None
    """Context window in tokens; None: the backend's default (8192, or 2048 embedded)."""
    connect_timeout: float | None = 10.0
    """Seconds to connect to the server (None: no bound)."""
    first_byte_timeout: float | None = 120.0
    """Seconds from sending a request to the first byte of the answer (None: no bound)."""
    read_timeout: float | None = 120.0
    """Seconds of silence allowed between two pieces of a streamed answer (None: no bound)."""
    total_timeout: float | None = 600.0
    """Seconds one whole generation may take (None: no bound)."""
    metrics: Literal["auto", "off"] = "auto"
    """``auto``: read load from ``/metrics`` when the server has it, else count in-flight
    requests; ``off``: in-flight counts only."""
    metrics_ttl: float = 0.5
    """How long one ``/metrics`` scrape is reused, in seconds."""
    continue_final_message: bool = True
    """Send vLLM/SGLang's ``continue_final_message`` when continuing a chat answer."""
    check_model: bool = True
    """Reject replies that name another model than ``served_model``."""
    max_connections: int = 64
    """Most HTTP connections kept open to the server."""
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
            _invalid("kind", f"must be one of {', '.join(_KINDS)}", self.kind)
        if not self.model_path:
            _invalid("model_path", "must not be empty (it is the model's network name)", self.model_path)
        if self.kind == "openai" and not self.base_url:
            raise ConfigError("base_url: required for backend: openai")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            _invalid("base_url", "must start with http:// or https://", self.base_url)
        if self.metrics not in ("auto", "off"):
            _invalid("metrics", "must be auto or off", self.metrics)
        for name in ("max_concurrency", "context_length", "max_connections", "n_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                _invalid(name, "must be at least 1", value)
        for name in ("connect_timeout", "first_byte_timeout", "read_timeout", "total_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                _invalid(name, "must be > 0", value)
        if self.metrics_ttl < 0:
            _invalid("metrics_ttl", "must be >= 0", self.metrics_ttl)
        if self.price_per_1k < 0:
            _invalid("price_per_1k", "must be >= 0", self.price_per_1k)
        for name in ("gen_params", "fake"):
            if not isinstance(getattr(self, name), Mapping):
                _invalid(name, "must be a mapping", getattr(self, name))
        object.__setattr__(self, "gen_params", MappingProxyType(dict(self.gen_params)))
        object.__setattr__(self, "fake", MappingProxyType(dict(self.fake)))


def _invalid(name: str, reason: str, value: object) -> NoReturn:
    raise ConfigError(f"{name}: {reason} (got {value!r})")


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
            raise ConfigError(f"fake: unknown fake options {unknown} for model {spec.model_path!r}; known: {sorted(known)}")
        try:
            fake_config = FakeConfig(**{"model": spec.served_model or spec.model_path, **spec.fake})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"fake: bad fake options for model {spec.model_path!r}: {exc}") from exc
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
