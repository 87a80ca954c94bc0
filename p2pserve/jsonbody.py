"""Parsing an OpenAI request body that came from someone else (a user at the API, a peer's
offer): JSON that nests at most :data:`MAX_JSON_DEPTH` levels and is text (no lone UTF-16
surrogate), or :class:`~p2pserve.errors.BadRequest`. Pure: no I/O."""

from __future__ import annotations

import json
from typing import Any

from p2pserve.errors import BadRequest

__all__ = ["MAX_JSON_DEPTH", "json_too_deep", "parse_json_body"]

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays/objects a request body may have."""


def json_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests arrays/objects more than ``limit`` levels
    (iterative: a deep value cannot exhaust the stack here)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json_body(raw: bytes) -> Any:
    """The parsed body; BadRequest if it is not JSON, nests deeper than MAX_JSON_DEPTH or holds
    a lone surrogate."""
    try:
        body = json.loads(raw)
    except RecursionError as exc:  # the C decoder gives up past the interpreter's recursion limit
        raise BadRequest(f"the request body nests more than {MAX_JSON_DEPTH} levels of arrays/objects") from exc
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if json_too_deep(body):
        raise BadRequest(f"the request body nests more than {MAX_JSON_DEPTH} levels of arrays/objects")
    # A lone surrogate (an unpaired "\ud800" escape, or CESU bytes json.loads lets through) is
    # not text: it would fail as a UnicodeEncodeError wherever the body is encoded again (a
    # backend's HTTP request: a 500, or an executor's crash). Only an escape or a non-ASCII
    # byte can make one.
    if b"\\" in raw or not raw.isascii():
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise BadRequest("the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff): not text") from exc
    return body
