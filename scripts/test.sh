#!/usr/bin/env bash
# The test suite: installs what it needs on first run, then lint and every test layer.
# RLAIF_FAST=1 skips the tests that load the real SmolLM2 (-m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests bench
if ! command -v chromium >/dev/null 2>&1; then  # setup.sh installs it only as root or with passwordless sudo
  echo "rlaif: WARNING: no chromium on this machine: the report's headless-browser test will be SKIPPED" \
       "(install Debian's chromium, or run as root once, to run it)" >&2
fi
args=(-q --durations=30)  # the 30 slowest tests at the end: where the CI budget goes
[[ -n "${RLAIF_FAST:-}" ]] && args+=(-m "not slow")
exec .venv/bin/python -m pytest "${args[@]}" "$@"
