"""Talking to a node's HTTP API from the CLI: its URL, the bearer key, and the errors people see.

Every command that reads or writes a node (``ask``, ``status``, ``models``, ``stake``,
``unstake``, ``audit --api``/``--compare``) goes through here, so that one failure reads the
same in each (exit 1, see :mod:`p2pserve.cli.common`):

* nobody answers: :func:`unreachable_message`;
* HTTP 401: :func:`unauthorized_message` (the node has ``server_params.api_key``);
* any other non-2xx: ``<url><path>: HTTP <code>: <the node's message>``;
* no answer in time: ``<url> did not answer within <n> s``.

A malformed ``--api`` value is a usage error (exit 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx

from p2pserve.cli.common import fail, usage_error

__all__ = [
    "api_url",
    "auth_headers",
    "check_response",
    "error_text",
    "get_json",
    "http_errors",
    "post_json",
    "source_error",
    "unauthorized_message",
    "unreachable_message",
]


def api_url(value: str, option: str = "--api") -> str:
    """A node's API root from what the user typed (``HOST:PORT`` gets ``http://``), without a
    trailing slash. Raises the Exit of a usage error when it cannot be a URL."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise usage_error(f"{option} {value!r} is not a node's API URL (e.g. http://127.0.0.1:5778)")
    return text.rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def unreachable_message(url: str) -> str:
    return f"no p2pserve node answers at {url} (start one with `p2pserve join` or ./scripts/demo.sh, or pass --api URL)"


def unauthorized_message(url: str, api_key: str | None) -> str:
    """The one 401 message: the node requires a key, or refused the one given."""
    if api_key:
        return (f"the node at {url} refused the API key (HTTP 401; pass its server_params.api_key "
                "with --api-key KEY or P2PSERVE_API_KEY)")
    return f"the node at {url} requires an API key (HTTP 401; pass --api-key KEY or set P2PSERVE_API_KEY)"


def error_text(r: httpx.Response) -> str:
    """The node's message in an error response (OpenAI's error shape), else the body's start."""
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:300]


def check_response(r: httpx.Response, url: str, api_key: str | None) -> None:
    """Raise the Exit of a one-line error unless ``r`` succeeded (read a streamed body first)."""
    if r.status_code == 401:
        raise fail(unauthorized_message(url, api_key))
    if not r.is_success:
        raise fail(f"{r.request.url}: HTTP {r.status_code}: {error_text(r)}")


@contextlib.contextmanager
def http_errors(url: str, timeout: float | None = None, *, timeout_option: str | None = None) -> Iterator[None]:
    """httpx's transport errors inside the block as one-line errors about the node at ``url``
    (``timeout``: the seconds allowed, named in the message with the option that sets them)."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise fail(unreachable_message(url), exc=exc) from None
    except httpx.TimeoutException as exc:
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        hint = f" (pass {timeout_option} SECONDS to wait longer)" if timeout_option else ""
        raise fail(f"{url} did not answer{within}{hint}", exc=exc) from None
    except httpx.HTTPError as exc:
        raise fail(f"{url}: {exc}", exc=exc) from None


def _json(r: httpx.Response, url: str) -> Any:
    try:
        return r.json()
    except ValueError:
        raise fail(f"{r.request.url} did not answer JSON (is {url} a p2pserve node's API?)") from None


def get_json(url: str, path: str, *, api_key: str | None = None, timeout: float = 5.0) -> Any:
    """``GET url + path`` as JSON; every failure a one-line error (exit 1)."""
    with http_errors(url, timeout):
        r = httpx.get(url + path, timeout=timeout, headers=auth_headers(api_key))
    check_response(r, url, api_key)
    return _json(r, url)


def post_json(url: str, path: str, body: Any, *, api_key: str | None = None, timeout: float = 30.0) -> httpx.Response:
    """``POST url + path`` with a JSON body. Transport errors and 401 are one-line errors; any
    other answer is returned for the caller to read (it knows the endpoint's error codes)."""
    with http_errors(url, timeout):
        r = httpx.post(url + path, json=body, timeout=timeout, headers=auth_headers(api_key))
    if r.status_code == 401:
        raise fail(unauthorized_message(url, api_key))
    return r


def source_error(exc: BaseException, url: str, api_key: str | None) -> str:
    """The one-line message for a failed read of the node at ``url`` by a library that wraps
    httpx's error (``raise StoreError(...) from httpx_error``): the same words as above."""
    cause = exc.__cause__
    if isinstance(cause, httpx.ConnectError):
        return unreachable_message(url)
    if isinstance(cause, httpx.HTTPStatusError):
        if cause.response.status_code == 401:
            return unauthorized_message(url, api_key)
        return f"{cause.request.url}: HTTP {cause.response.status_code}: {error_text(cause.response)}"
    if isinstance(cause, httpx.TimeoutException):
        return f"{url} did not answer in time"
    return str(exc)
