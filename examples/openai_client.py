"""Use any p2pserve node with the official OpenAI Python SDK, unchanged.

    .venv/bin/python examples/openai_client.py [http://127.0.0.1:5778] ["your question"]

Start a node first (./scripts/demo.sh, or `p2pserve join`). The answer comes from whichever
peer the node chose; the response says which one and carries its signed receipt.
"""

from __future__ import annotations

import sys

from openai import OpenAI


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:5778"
    question = sys.argv[2] if len(sys.argv) > 2 else "What is the capital of France?"
    client = OpenAI(base_url=f"{base}/v1", api_key="unused-unless-the-node-sets-server_params.api_key")
    model = client.models.list().data[0].id
    print(f"model: {model}")

    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=32
    )
    completion = raw.parse()
    print(f"answer: {completion.choices[0].message.content}")
    print(f"executed by: {raw.headers['x-p2pserve-executor']}")
    extra = (completion.model_extra or {}).get("p2pserve", {})
    print(f"receipt: {'signed receipt attached' if extra.get('receipt') else 'none (ran on the node itself)'}")

    print("streamed: ", end="", flush=True)
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello in three words."}], max_tokens=16, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
