"""The backend conformance suite: every :class:`p2pserve.backends.base.Backend` passes it.

Contract checked (see :mod:`p2pserve.backends.base`): ``generate`` yields TextDelta events
then exactly one Finished, for chat and completions, the same text twice for the same
request (greedy or seeded); closing the iteration early leaves the backend usable and its
load back at zero; ``load()`` returns a known Load; ``check()`` passes; a continuation continues the answer;
``aclose`` is idempotent.

How to plug in a backend
========================

Subclass :class:`BackendConformance` in a test module (the class name must start with
``Test``) and provide ONE fixture, ``make_backend``: a plain callable returning a new,
unused backend. The suite closes it (twice) after each test::

    from p2pserve.testing.backend_suite import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def make_backend(self):
            return lambda: MyBackend("m", ...)

Parametrize the fixture (``@pytest.fixture(params=...)``) to run the suite over several
configurations; mark the class (``@pytest.mark.embedded``, ``skipif``) to mark every test.
Optional class attributes: ``chat_body`` and ``completion_body`` (requests without
``model``; each sets ``max_tokens``), ``timeout`` (bound on one generation, seconds, on
whatever clock the test runs).

Runs under pytest with pytest-trio's ``trio_mode`` (as this project's tests do).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest
import trio

from p2pserve.backends.base import Backend, Finished, Kind, Load, TextDelta

__all__ = ["BackendConformance", "MakeBackend", "collect"]

MakeBackend = Callable[[], Backend]


async def collect(b: Backend, kind: Kind, body: dict[str, Any], continuation: str = "", *,
                  timeout: float = 120.0) -> tuple[str, Finished]:
    """Run one generation to its end: ``(text, the Finished event)``; asserts the event order."""
    deltas: list[str] = []
    finals: list[Finished] = []
    with trio.fail_after(timeout):
        async with aclosing(b.generate(kind, body, continuation=continuation)) as events:  # type: ignore[type-var]
            async for event in events:
                assert not finals, "nothing may follow Finished"
                if isinstance(event, TextDelta):
                    deltas.append(event.text)
                else:
                    assert isinstance(event, Finished), f"not a generation event: {event!r}"
                    finals.append(event)
    assert len(finals) == 1, "a generation ends with exactly one Finished"
    return "".join(deltas), finals[0]


class BackendConformance:
    """Inherit to run the backend suite (see the module docstring)."""

    chat_body: dict[str, Any] = {"messages": [{"role": "user", "content": "Name three rivers."}], "max_tokens": 12}
    completion_body: dict[str, Any] = {"prompt": "Rivers of the world:", "max_tokens": 12}
    timeout: float = 120.0

    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> AsyncIterator[Backend]:
        b = make_backend()
        yield b
        await b.aclose()
        await b.aclose()  # idempotent

    @pytest.mark.parametrize("kind", ["chat", "completion"])
    async def test_generate_contract(self, backend: Backend, kind: Kind) -> None:
        body = self.chat_body if kind == "chat" else self.completion_body
        text, final = await collect(backend, kind, body, timeout=self.timeout)
        assert text and final.finish_reason in ("stop", "length")
        assert 0 < final.completion_tokens <= body["max_tokens"] and final.prompt_tokens > 0
        again, _ = await collect(backend, kind, body, timeout=self.timeout)
        assert again == text  # greedy / deterministic by default

    async def test_load_and_early_close(self, backend: Backend) -> None:
        with trio.fail_after(self.timeout):
            await backend.check()  # a healthy backend passes its health check
        load = await backend.load()
        assert isinstance(load, Load) and load.known and (load.running, load.queued) == (0, 0)
        with trio.fail_after(self.timeout):
            async with aclosing(backend.generate("chat", self.chat_body)) as events:  # type: ignore[type-var]
                async for event in events:
                    assert isinstance(event, TextDelta)
                    break
        load = await backend.load()
        assert (load.running, load.queued) == (0, 0)
        text, _ = await collect(backend, "chat", self.chat_body, timeout=self.timeout)  # still usable
        assert text

    async def test_continuation(self, backend: Backend) -> None:
        assert backend.supports_continuation
        body = {**self.chat_body, "max_tokens": 2 * self.chat_body["max_tokens"]}
        full, _ = await collect(backend, "chat", body, timeout=self.timeout)
        cut = full.index(" ", 4)
        rest, final = await collect(backend, "chat", body, continuation=full[:cut], timeout=self.timeout)
        assert rest and final.completion_tokens > 0
        assert (full[:cut] + rest).startswith(full[: cut + 1])
