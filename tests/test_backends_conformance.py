"""The Backend conformance suite (STYLE rule 4), run against every implementation here.

The suite ships in :mod:`p2pserve.testing.backend_suite`; each class below plugs one
implementation into it (the fake through the OpenAI client in every metrics dialect, the
registry's ``fake`` kind, the embedded model).
"""

from __future__ import annotations

import pytest

from p2pserve.backends.embedded import EmbeddedBackend, missing_reason
from p2pserve.backends.fake import FakeBackend
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
