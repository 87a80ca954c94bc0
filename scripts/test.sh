#!/usr/bin/env bash
# Install everything (see setup.sh) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The status page test drives a real headless browser: Debian's chromium, installed here when
# missing and apt-get can (root, or sudo without a password); otherwise that test skips and says why.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && command -v apt-get >/dev/null; then
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo -n"
  echo "==> installing chromium for the status page test" >&2
  ( timeout 300 $as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 $as_root apt-get install -y -qq chromium ) >/dev/null 2>&1 \
    || echo "==> chromium not installed; the status page browser test will skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
