#!/usr/bin/env bash
# The test suite: installs what it needs on first run, then lint and every test layer.
# RLAIF_FAST=1 skips the tests that load the real SmolLM2 (-m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests bench
args=(-q)
[[ -n "${RLAIF_FAST:-}" ]] && args+=(-m "not slow")
exec .venv/bin/python -m pytest "${args[@]}" "$@"
