"""build_backend: a typed spec, chosen by kind name, validated with ConfigError."""

from __future__ import annotations

import httpx
import pytest

from p2pserve.backends.embedded import EmbeddedBackend
from p2pserve.backends.fake import FakeBackend
from p2pserve.backends.openai import OpenAIBackend
from p2pserve.backends.registry import BackendSpec, build_backend
from p2pserve.errors import ConfigError


def test_openai_spec_maps_every_field() -> None:
    spec = BackendSpec("llama-8b", base_url="http://127.0.0.1:8000/v1", api_key="k", served_model="meta/Llama-8B",
                       gen_params={"max_tokens": 64}, max_concurrency=32, context_length=4096, read_timeout=5.0,
                       total_timeout=None, metrics="off", continue_final_message=False, check_model=False)
    b = build_backend(spec)
    assert isinstance(b, OpenAIBackend)
    assert (b.model, b.served_model, b.base_url) == ("llama-8b", "meta/Llama-8B", "http://127.0.0.1:8000")
    assert (b.max_concurrency, b.context_length, b.metrics_mode) == (32, 4096, "off")
    assert b.gen_params == {"max_tokens": 64} and b.timeouts.read == 5.0 and b.timeouts.total is None
    assert not b.continue_final_message and not b.check_model
    with pytest.raises(TypeError):
        spec.gen_params["x"] = 1  # type: ignore[index]  # frozen all the way down


def test_embedded_and_fake_kinds() -> None:
    e = build_backend(BackendSpec("smollm2-135m-instruct", kind="embedded", gen_params={"max_tokens": 16}))
    assert isinstance(e, EmbeddedBackend) and e.context_length == 2048 and e.gen_params["max_tokens"] == 16
    f = build_backend(BackendSpec("m", kind="fake", fake={"dialect": "sglang"}))
    assert isinstance(f, OpenAIBackend) and f.model == "m"
    fake = FakeBackend(model="m")
    g = build_backend(BackendSpec("m", kind="fake"), transport=fake.mock_transport())
    assert isinstance(g, OpenAIBackend)


async def test_fake_kind_generates() -> None:
    b = build_backend(BackendSpec("m", kind="fake", fake={"seed": 1}))
    events = [e async for e in b.generate("chat", {"messages": [{"role": "user", "content": "hi"}]})]
    assert events[-1].finish_reason == "stop"  # type: ignore[union-attr]
    await b.aclose()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "tgi", "base_url": "http://x"},
        {"base_url": None},
        {"base_url": "ftp://x"},
        {"base_url": "http://x", "metrics": "sometimes"},
        {"base_url": "http://x", "max_concurrency": 0},
        {"base_url": "http://x", "read_timeout": 0},
        {"base_url": "http://x", "metrics_ttl": -1},
    ],
)
def test_invalid_specs(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        BackendSpec("m", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BackendSpec("", base_url="http://x")


def test_bad_fake_options() -> None:
    with pytest.raises(ConfigError, match="unknown fake options"):
        build_backend(BackendSpec("m", kind="fake", fake={"ttft": 1}))
    with pytest.raises(ConfigError, match="bad fake options"):
        build_backend(BackendSpec("m", kind="fake", fake={"dialect": "tgi"}))


def test_transport_injection_for_openai() -> None:
    b = build_backend(BackendSpec("m", base_url="http://x"), transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    assert isinstance(b, OpenAIBackend)
