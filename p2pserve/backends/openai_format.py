"""The OpenAI wire format in one place: request validation and parsing; answer, chunk and error shapes.

Pure: no I/O, no clock. The node's API (:mod:`p2pserve.api.openai`) and the backends that
read or write OpenAI bodies themselves (:mod:`.embedded`, :mod:`.fake`) use it, so a change
of format is made here once.

Requests. :func:`validate_body` is what a node accepts from its users (and raises
:class:`~p2pserve.errors.BadRequest` naming the bad field). The readers
:func:`chat_messages`, :func:`prompt_text` and :func:`message_text` apply the same text rule
to what a backend receives: a message's content is a string or a list of text parts
(``{"type": "text", "text": "..."}``), read as their concatenation; null reads as ``""``.
They raise :class:`~p2pserve.errors.BadRequest` too: an invalid request is the client's
error, never a backend failure.

Answers. :func:`completion_object`, :func:`chunk_object` and :func:`usage_chunk` build the
objects in OpenAI's key order; the API renders streamed text chunks from byte templates made
from :func:`chunk_object`, so its bytes depend on that order. :func:`error_object` is
OpenAI's error body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pserve.backends.base import Kind
from p2pserve.errors import BadRequest, ServingError

__all__ = [
    "ROLES",
    "chat_messages",
    "chunk_object",
    "completion_object",
    "error_body",
    "error_object",
    "message_text",
    "object_name",
    "prompt_text",
    "usage",
    "usage_chunk",
    "validate_body",
]

ROLES = ("system", "user", "assistant", "tool", "developer")
"""Message roles a node accepts."""
_STRIP = ("stream", "stream_options")
_CONTENT_RULE = "must be a string or a list of text parts"


# -- requests ------------------------------------------------------------------------------


def _is_text(content: object) -> bool:
    return isinstance(content, str) or isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    )


def message_text(content: object) -> str:
    """A message's content as text: a string, the text parts joined, or ``""`` for null.
    Raises BadRequest for anything else (a non-text part, a number, ...)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if _is_text(content):
        assert isinstance(content, list)
        return "".join(p["text"] for p in content)
    raise BadRequest(f"message content {_CONTENT_RULE}")


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """``body["messages"]`` as ``[{"role", "content"}]`` with text contents; raises BadRequest."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list")
    out: list[dict[str, str]] = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a string 'role'")
        out.append({"role": m["role"], "content": message_text(m.get("content"))})
    return out


def prompt_text(body: Mapping[str, Any]) -> str:
    """``body["prompt"]``: a string, or a list of one string; raises BadRequest."""
    raw = body.get("prompt")
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str):
        raise BadRequest("'prompt' must be a string (or a list of one string)")
    return raw


def _number(body: Mapping[str, Any], key: str, lo: float, hi: float) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be a number between {lo} and {hi}")


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"'messages[{i}]' must be an object with a role in {ROLES}")
        content = m.get("content")
        if content is None and m.get("role") == "assistant":
            continue
        if not _is_text(content):
            raise BadRequest(f"'messages[{i}].content' {_CONTENT_RULE}")


def _check_sampling(body: Mapping[str, Any]) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise BadRequest(f"'{key}' must be a positive integer")
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("'n' must be 1")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise BadRequest("'stop' must be a string or a list of strings")


def validate_body(kind: Kind, body: Any) -> tuple[str, bool, dict[str, Any]]:
    """``(model, stream, body for the backend)`` of a user's request; raises BadRequest naming
    the bad field. The backend's body lacks ``stream``/``stream_options`` and has a
    one-string prompt list unwrapped."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    if kind == "chat":
        _check_messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            body = {**body, "prompt": prompt[0]}
        elif not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
    _check_sampling(body)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object")
    return model, stream, {k: v for k, v in body.items() if k not in _STRIP}


# -- answers -------------------------------------------------------------------------------


def object_name(kind: Kind, *, chunk: bool) -> str:
    """The ``object`` of an answer (``chunk``: of a streamed chunk) to a ``kind`` request."""
    if kind == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(
    kind: Kind, id: str, created: int, model: str, text: str, finish_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A whole (non-streamed) answer: ``chat.completion`` or ``text_completion``."""
    choice: dict[str, Any]
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return {"id": id, "object": object_name(kind, chunk=False), "created": created, "model": model,
            "choices": [choice], "usage": usage}


def chunk_object(
    kind: Kind, id: str, created: int, model: str, *, text: str | None = None, role: bool = False,
    finish: str | None = None,
) -> dict[str, Any]:
    """One streamed chunk. Chat: ``delta`` holds ``role`` (when ``role``) and ``content``
    (unless ``text`` is None). Completions: ``text`` (None reads as ``""``)."""
    choice: dict[str, Any]
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    return {"id": id, "object": object_name(kind, chunk=True), "created": created, "model": model, "choices": [choice]}


def usage_chunk(kind: Kind, id: str, created: int, model: str, usage: dict[str, int]) -> dict[str, Any]:
    """The chunk ``stream_options.include_usage`` asks for: no choices, the usage."""
    return {"id": id, "object": object_name(kind, chunk=True), "created": created, "model": model,
            "choices": [], "usage": usage}


def error_object(message: str, type: str, code: str | int | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_body(exc: ServingError) -> dict[str, Any]:
    """The error body a node answers ``exc`` with (``param`` names the model when it is unknown)."""
    return error_object(str(exc), exc.error_type, exc.error_type, "model" if exc.status_code == 404 else None)
