"""A node's ``limits:`` reach its services, and a peer's bad body is answered, not crashed on.

Virtual time, memory transport, real nodes (:mod:`p2pserve.sim.cluster`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from p2pserve.backends.base import Backend, Finished, GenerationEvent, Kind, Load, TextDelta
from p2pserve.config import NodeConfig, parse_config
from p2pserve.errors import BadRequest, P2PServeError
from p2pserve.node import Node
from p2pserve.serving import executor
from p2pserve.serving.events import Completed
from p2pserve.serving.events import TextDelta as Delta
from p2pserve.sim.cluster import open_cluster
from p2pserve.testing.stream_helpers import until
from p2pserve.wire.infer import Chunk
from transports.memory import MemoryNetwork

MODEL = "fake-model"


def cfg(*, models: bool = True, limits: dict[str, int] | None = None) -> NodeConfig:
    raw: dict[str, Any] = {"server_params": {"accept_frequency": 1.0}, "limits": limits or {}}
    raw["models"] = [{"model_path": MODEL, "backend": "fake", "dispatch_params": {"max_concurrency": 8}}] if models else []
    return parse_config(raw)


class Words(Backend):
    """Answers ``text`` in one delta; raises BadRequest for a body with ``"bad": true``."""

    model = MODEL
    context_length = 8192
    max_concurrency = 4

    def __init__(self, text: str = "one two three four five") -> None:
        self.text = text

    async def generate(self, kind: Kind, body: dict[str, Any], *, continuation: str = "") -> AsyncIterator[GenerationEvent]:
        if body.get("bad"):
            raise BadRequest("the backend refuses this body")
        yield TextDelta(self.text)
        yield Finished("stop", prompt_tokens=3, completion_tokens=5)

    async def load(self) -> Load:
        return Load(source="inflight")


async def ask(node: Node, content: str = "hi", **extra: Any) -> tuple[str, Completed | None, Exception | None]:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 16, **extra}
    text, done = [], None
    try:
        async with node.serve.submit("chat", MODEL, body) as events:
            async for ev in events:
                if isinstance(ev, Delta):
                    text.append(ev.text)
                elif isinstance(ev, Completed):
                    done = ev
    except P2PServeError as exc:
        return "".join(text), done, exc
    return "".join(text), done, None


async def ready(gw: Node, ex: Node) -> None:
    await until(lambda: bool(gw.peers.candidates(MODEL)) and gw.ledger.writable and ex.ledger.writable)


async def test_an_executor_refuses_offers_above_its_max_prompt(autojump_clock: trio.testing.MockClock) -> None:
    configs = [cfg(models=False), cfg(limits={"max_prompt": 2000, "max_frame": 8000, "max_text_chunk": 4000})]
    async with open_cluster(configs, network=MemoryNetwork(seed=31), seed=31, backends=lambda i: {MODEL: Words()} if i else {}) as c:
        gw, ex = c[0], c[1]
        await ready(gw, ex)
        text, done, err = await ask(gw, "short")
        assert err is None and text == "one two three four five" and done is not None and not done.local
        text, done, err = await ask(gw, "x" * 3000)  # fine for the gateway, too large for the executor
        assert done is None and err is not None and "too-large" in str(err)
        assert ex.serve.counters.served_for_peers == 1
        # the executor's own users are held to its limit too
        _, _, err = await ask(ex, "x" * 3000)
        assert isinstance(err, BadRequest) and "exceeds 2000" in str(err)


async def test_an_executor_chunks_its_answer_by_its_max_text_chunk(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    words = "lorem ipsum dolor sit amet " * 4
    configs = [cfg(models=False), cfg(limits={"max_text_chunk": 5})]
    async with open_cluster(configs, network=MemoryNetwork(seed=32), seed=32, backends=lambda i: {MODEL: Words(words)} if i else {}) as c:
        gw, ex = c[0], c[1]
        await ready(gw, ex)
        sent: list[int] = []  # the text length of every Chunk the executor sends
        real_put = executor._Outbox.put

        async def put(self: Any, msg: Any) -> None:
            if isinstance(msg, Chunk):
                sent.append(len(msg.text))
            await real_put(self, msg)

        monkeypatch.setattr(executor._Outbox, "put", put)
        text, done, err = await ask(gw, max_tokens=64)
        assert err is None and text == words and done is not None and not done.local
        assert max(sent) == 5 and len(sent) == -(-len(words) // 5)


async def test_a_body_the_backend_refuses_is_answered_with_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    """A peer's body that makes the backend raise BadRequest (an honest requester's API
    never sends one) gets a Failure back; the executor's session goes on serving."""
    async with open_cluster([cfg(models=False), cfg()], network=MemoryNetwork(seed=33), seed=33,
                            backends=lambda i: {MODEL: Words()} if i else {}) as c:
        gw, ex = c[0], c[1]
        await ready(gw, ex)
        text, done, err = await ask(gw, bad=True)
        assert done is None and err is not None and "invalid_request_error" in str(err)
        text, done, err = await ask(gw)
        assert err is None and text == "one two three four five"


def test_limits_may_only_tighten_the_protocol_caps() -> None:
    with pytest.raises(P2PServeError, match="max_frame"):
        cfg(limits={"max_frame": 64 * 1024 * 1024})
