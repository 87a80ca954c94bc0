"""The Backend conformance suite (STYLE rule 4), run against every implementation here.

The suite ships in :mod:`p2pserve.testing.backend_suite`; each class below plugs one
implementation into it (the fake through the OpenAI client in every metrics dialect, over
httpx's MockTransport and over real loopback sockets, the registry's ``fake`` kind, the
embedded model).
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from p2pserve.backends.embedded import EmbeddedBackend, missing_reason
from p2pserve.backends.fake import FakeBackend, serve_fake_backend
from p2pserve.backends.openai import OpenAIBackend
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.testing.backend_suite import BackendConformance, MakeBackend


class TestOpenAIClientOverFake(BackendConformance):
    @pytest.fixture(params=["vllm", "sglang", "llamacpp", "none"], ids=lambda d: f"openai-fake-{d}")
    def make_backend(self, request: pytest.FixtureRequest) -> MakeBackend:
        return lambda: OpenAIBackend("fake", "http://fake.invalid", metrics_ttl=0.0,
                                     transport=FakeBackend(dialect=request.param).mock_transport())


class TestRegistryFake(BackendConformance):
    @pytest.fixture
    def make_backend(self) -> MakeBackend:
        return lambda: build_backend(BackendSpec("m", kind="fake", metrics_ttl=0.0, fake={"seed": 3}))


@pytest.mark.embedded
@pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")
class TestEmbedded(BackendConformance):
    @pytest.fixture
    def make_backend(self) -> MakeBackend:
        return EmbeddedBackend


class TestOpenAIClientOverRealServer(BackendConformance):
    """The product path: the lean h11 client over real loopback sockets to the fake's server."""

    @pytest.fixture(params=["vllm", "none"], ids=lambda d: f"openai-h11-{d}")
    async def make_backend(self, request: pytest.FixtureRequest, nursery: trio.Nursery) -> MakeBackend:
        server = await nursery.start(partial(serve_fake_backend, dialect=request.param))
        return lambda: OpenAIBackend("fake", server.base_url, metrics_ttl=0.0)
