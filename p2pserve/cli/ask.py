"""``p2pserve ask``: send one prompt to a node's OpenAI-compatible API and print the answer."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
import typer

from p2pserve.cli.client import api_url, auth_headers, check_response, http_errors
from p2pserve.cli.common import api_key_option, api_option, err_console, fail

__all__ = ["ask"]


def _pick_model(client: httpx.Client, url: str, api_key: str | None) -> str:
    r = client.get(f"{url}/v1/models")
    check_response(r, url, api_key)
    models = [m["id"] for m in r.json().get("data", [])]
    if not models:
        raise fail("no model is reachable in the network yet (is any node serving one? see `p2pserve models`)")
    return str(sorted(models)[0])


def ask(
    prompt: str = typer.Argument(..., help="The prompt (sent as one user message)."),
    api: str = api_option(),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name [default: the first model the network serves]."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Most tokens to generate."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print tokens as they arrive."),
    as_json: bool = typer.Option(False, "--json", help="Print the OpenAI response object (non-streamed) and nothing else."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature."),
    api_key: str | None = api_key_option(),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for the whole answer."),
) -> None:
    """Ask the network a question; print the answer and which peer executed it."""
    url = api_url(api)
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    client = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), headers=auth_headers(api_key))
    with http_errors(url, timeout, timeout_option="--timeout"), client:
        body["model"] = model or _pick_model(client, url, api_key)
        if as_json or not stream:
            _ask_once(client, url, body, as_json, api_key)
        else:
            _ask_stream(client, url, body, api_key)


def _ask_once(client: httpx.Client, url: str, body: dict[str, Any], as_json: bool, api_key: str | None) -> None:
    r = client.post(f"{url}/v1/chat/completions", json={**body, "stream": False})
    check_response(r, url, api_key)
    data = r.json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(data["choices"][0]["message"]["content"])
    executor = data.get("p2pserve", {}).get("executor") or r.headers.get("x-p2pserve-executor", "?")
    usage = data.get("usage") or {}
    err_console.print(f"[dim]executed by {executor} · {usage.get('completion_tokens', '?')} tokens[/]", highlight=False)


def _ask_stream(client: httpx.Client, url: str, body: dict[str, Any], api_key: str | None) -> None:
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", f"{url}/v1/chat/completions", json=payload) as r:
        if not r.is_success:
            r.read()
            check_response(r, url, api_key)
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
