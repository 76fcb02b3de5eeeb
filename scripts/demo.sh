#!/usr/bin/env bash
# The main job on the embedded default: offline PPO on SmolLM2-135M-Instruct on the CPU.
# Installs what it needs on first run (scripts/setup.sh). Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rlaif ppo --config configs/demo.yaml "$@"
