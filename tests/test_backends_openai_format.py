"""backends/openai_format: the one place for OpenAI request rules and answer shapes.

The answer shapes are pinned byte for byte: the node's API renders streamed chunks from
templates made of them, and clients parse what it sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from p2pserve.backends.openai_format import (
    chat_messages,
    chunk_object,
    completion_object,
    error_body,
    error_object,
    message_text,
    prompt_text,
    usage,
    usage_chunk,
    validate_body,
)
from p2pserve.errors import BadRequest, NoCapacity, UnknownModel


def compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_the_text_rule_is_one_rule() -> None:
    assert message_text("hi") == "hi" and message_text(None) == ""
    assert message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert message_text([]) == ""
    for bad in ([{"type": "image_url", "image_url": {}}], [{"type": "text"}], [{"type": "text", "text": 3}], 3, {"text": "x"}):
        with pytest.raises(BadRequest, match="must be a string or a list of text parts"):
            message_text(bad)
        # the API refuses the same contents, naming the message
        with pytest.raises(BadRequest, match=r"'messages\[0\]\.content' must be a string or a list of text parts"):
            validate_body("chat", {"model": "m", "messages": [{"role": "user", "content": bad}]})


def test_readers() -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}, {"role": "assistant"}]}
    assert chat_messages(body) == [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]
    assert prompt_text({"prompt": ["p"]}) == "p" and prompt_text({"prompt": "q"}) == "q"
    for bad in ({}, {"messages": []}, {"messages": [{"content": "x"}]}, {"messages": "x"}):
        with pytest.raises(BadRequest):
            chat_messages(bad)
    for bad in ({}, {"prompt": ["a", "b"]}, {"prompt": 3}):
        with pytest.raises(BadRequest):
            prompt_text(bad)


def test_validate_body_accepts_an_assistant_turn_without_content_only() -> None:
    assistant = {"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]}
    assert validate_body("chat", assistant)[0] == "m"
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content"):
        validate_body("chat", {"model": "m", "messages": [{"role": "user", "content": None}]})


def test_answer_shapes_byte_for_byte() -> None:
    u = usage(3, 2)
    assert compact(u) == '{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}'
    assert compact(completion_object("chat", "chatcmpl-1", 5, "m", "Hi", "stop", u)) == (
        '{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"m","choices":[{"index":0,'
        '"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop","logprobs":null}],"usage":'
        '{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}')
    assert compact(completion_object("completion", "cmpl-1", 5, "m", "Hi", "length", u)) == (
        '{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"index":0,'
        '"text":"Hi","finish_reason":"length","logprobs":null}],"usage":'
        '{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}')
    head = ("chat", "chatcmpl-1", 5, "m")
    assert compact(chunk_object(*head, text="", role=True)) == (
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{"index":0,'
        '"delta":{"role":"assistant","content":""},"finish_reason":null,"logprobs":null}]}')
    assert compact(chunk_object(*head, text="a")) == (
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{"index":0,'
        '"delta":{"content":"a"},"finish_reason":null,"logprobs":null}]}')
    assert compact(chunk_object(*head, finish="stop")) == (
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m","choices":[{"index":0,'
        '"delta":{},"finish_reason":"stop","logprobs":null}]}')
    assert compact(chunk_object("completion", "cmpl-1", 5, "m", finish="stop")) == (
        '{"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"index":0,'
        '"text":"","finish_reason":"stop","logprobs":null}]}')
    assert compact(usage_chunk(*head, u)) == (
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"m","choices":[],'
        '"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}')


def test_error_shapes() -> None:
    assert error_body(UnknownModel("no m")) == {
        "error": {"message": "no m", "type": "model_not_found", "param": "model", "code": "model_not_found"}}
    assert error_body(NoCapacity("busy"))["error"]["param"] is None
    assert error_object("x", "BadRequestError", 400) == {"error": {"message": "x", "type": "BadRequestError", "param": None, "code": 400}}
