"""The Backend conformance suite (STYLE rule 4), run against every implementation here.

Contract checked (p2pserve/backends/base.py): ``generate`` yields TextDelta events then
exactly one Finished; closing the iteration early leaves the backend usable and its load
back at zero; ``load()`` returns a Load; continuation continues; ``aclose`` is idempotent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest
import trio

from p2pserve.backends.base import Backend, Finished, Load, TextDelta
from p2pserve.backends.embedded import EmbeddedBackend, missing_reason
from p2pserve.backends.fake import FakeBackend
from p2pserve.backends.openai import OpenAIBackend
from p2pserve.backends.registry import BackendSpec, build_backend

CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "Name three rivers."}], "max_tokens": 12}
COMPLETION: dict[str, Any] = {"prompt": "Rivers of the world:", "max_tokens": 12}


def _fake(dialect: str) -> Callable[[], Backend]:
    return lambda: OpenAIBackend("fake", "http://fake.invalid", metrics_ttl=0.0,
                                 transport=FakeBackend(dialect=dialect).mock_transport())  # type: ignore[arg-type]


FACTORIES: list[Any] = [
    pytest.param(_fake("vllm"), id="openai-fake-vllm"),
    pytest.param(_fake("sglang"), id="openai-fake-sglang"),
    pytest.param(_fake("llamacpp"), id="openai-fake-llamacpp"),
    pytest.param(_fake("none"), id="openai-fake-no-metrics"),
    pytest.param(lambda: build_backend(BackendSpec("m", kind="fake", metrics_ttl=0.0, fake={"seed": 3})), id="registry-fake"),
    pytest.param(EmbeddedBackend, id="embedded", marks=[
        pytest.mark.embedded, pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")]),
]


@pytest.fixture(params=FACTORIES)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    b: Backend = request.param()
    yield b
    await b.aclose()
    await b.aclose()


async def _collect(b: Backend, kind: Any, body: dict[str, Any], continuation: str = "") -> tuple[str, Finished]:
    deltas: list[str] = []
    finals: list[Finished] = []
    with trio.fail_after(120):
        async with aclosing(b.generate(kind, body, continuation=continuation)) as events:  # type: ignore[type-var]
            async for event in events:
                assert not finals, "nothing may follow Finished"
                if isinstance(event, TextDelta):
                    deltas.append(event.text)
                else:
                    assert isinstance(event, Finished)
                    finals.append(event)
    assert len(finals) == 1
    return "".join(deltas), finals[0]


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_generate_contract(backend: Backend, kind: str) -> None:
    body = CHAT if kind == "chat" else COMPLETION
    text, final = await _collect(backend, kind, body)
    assert text and final.finish_reason in ("stop", "length")
    assert 0 < final.completion_tokens <= body["max_tokens"] and final.prompt_tokens > 0
    again, _ = await _collect(backend, kind, body)
    assert again == text  # greedy / deterministic by default


async def test_load_and_early_close(backend: Backend) -> None:
    load = await backend.load()
    assert isinstance(load, Load) and load.known and (load.running, load.queued) == (0, 0)
    with trio.fail_after(120):
        async with aclosing(backend.generate("chat", CHAT)) as events:  # type: ignore[type-var]
            async for event in events:
                assert isinstance(event, TextDelta)
                break
    load = await backend.load()
    assert (load.running, load.queued) == (0, 0)
    text, _ = await _collect(backend, "chat", CHAT)  # still usable
    assert text


async def test_continuation(backend: Backend) -> None:
    assert backend.supports_continuation
    full, _ = await _collect(backend, "chat", {**CHAT, "max_tokens": 24})
    cut = full.index(" ", 4)
    rest, final = await _collect(backend, "chat", {**CHAT, "max_tokens": 24}, continuation=full[:cut])
    assert rest and final.completion_tokens > 0
    assert (full[:cut] + rest).startswith(full[: cut + 1])
