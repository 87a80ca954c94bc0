#!/usr/bin/env bash
# Install everything (see setup.sh) and start a local network of 3 nodes on loopback, each
# serving the embedded SmolLM2-135M model. Ctrl-C stops it. Extra arguments go to `p2pserve demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/p2pserve demo "$@"
