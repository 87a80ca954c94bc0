"""``p2pserve ask``: send one prompt to a node's OpenAI-compatible API and print the answer."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
import typer

from p2pserve.cli.common import DEFAULT_API, api_url, err_console, fail


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _error_text(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:300]


def _pick_model(client: httpx.Client, url: str) -> str:
    r = client.get(f"{url}/v1/models")
    if r.status_code != 200:
        raise fail(f"{url}/v1/models: HTTP {r.status_code}: {_error_text(r)}")
    models = [m["id"] for m in r.json().get("data", [])]
    if not models:
        raise fail("no model is reachable in the network yet (is any node serving one?)", code=3)
    return str(sorted(models)[0])


def ask(
    prompt: str = typer.Argument(..., help="The prompt (sent as one user message)."),
    api: str = typer.Option(DEFAULT_API, "--api", envvar="P2PSERVE_API", help="The node's API URL."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name [default: the first model the network serves]."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Most tokens to generate."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print tokens as they arrive."),
    as_json: bool = typer.Option(False, "--json", help="Print the OpenAI response object (non-streamed) and nothing else."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="P2PSERVE_API_KEY", help="Bearer key if the node requires one."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for the whole answer."),
) -> None:
    """Ask the network a question; print the answer and which peer executed it."""
    url = api_url(api)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), headers=_headers(api_key)) as client:
            body["model"] = model or _pick_model(client, url)
            if as_json or not stream:
                _ask_once(client, url, body, as_json)
            else:
                _ask_stream(client, url, body)
    except httpx.ConnectError:
        raise fail(f"no p2pserve node answers at {url} (start one with `p2pserve join` or ./scripts/demo.sh, or pass --api)", code=2) from None
    except httpx.TimeoutException:
        raise fail(f"{url} did not answer within {timeout:.0f} s") from None
    except httpx.HTTPError as exc:
        raise fail(f"{url}: {exc}") from None


def _ask_once(client: httpx.Client, url: str, body: dict[str, Any], as_json: bool) -> None:
    r = client.post(f"{url}/v1/chat/completions", json={**body, "stream": False})
    if r.status_code != 200:
        raise fail(f"HTTP {r.status_code}: {_error_text(r)}")
    data = r.json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(data["choices"][0]["message"]["content"])
    executor = data.get("p2pserve", {}).get("executor") or r.headers.get("x-p2pserve-executor", "?")
    usage = data.get("usage") or {}
    err_console.print(f"[dim]executed by {executor} · {usage.get('completion_tokens', '?')} tokens[/]", highlight=False)


def _ask_stream(client: httpx.Client, url: str, body: dict[str, Any]) -> None:
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", f"{url}/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            r.read()
            raise fail(f"HTTP {r.status_code}: {_error_text(r)}")
        executor = r.headers.get("x-p2pserve-executor", "?")
        tokens = None
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                sys.stdout.write("\n")
                raise fail(f"the answer was cut off: {event['error'].get('message', event['error'])}")
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            if event.get("usage"):
                tokens = event["usage"].get("completion_tokens")
            executor = event.get("p2pserve", {}).get("executor", executor)
    sys.stdout.write("\n")
    err_console.print(f"[dim]executed by {executor} · {tokens if tokens is not None else '?'} tokens[/]", highlight=False)
