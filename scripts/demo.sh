#!/usr/bin/env bash
# The main job on the embedded default: `rlaif demo` — SFT, judge audit, AI-feedback labels, reward model, PPO,
# evaluation and an HTML report, offline on the CPU with SmolLM2-135M-Instruct (runs/demo/report.html).
# Installs what it needs on first run (scripts/setup.sh). Extra arguments are config overrides or --from/--only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rlaif demo "$@"
