#!/usr/bin/env bash
# Create ./.venv-llamafactory: LlamaFactory 0.9.5 for SFT of converted students, in its OWN environment.
#
# Why a second environment: LlamaFactory 0.9.5 pins transformers<=5.6.0, accelerate<=1.11.0 and
# datasets<=4.0.0, while training/conversion/evaluation (.venv) use current transformers 5.x. The
# converted student is a standard HF checkpoint, so it loads in both.
#
# CPU trap: PyPI's torchvision/torchaudio wheels that LlamaFactory pulls in do not match the CPU torch
# (torchvision: "operator torchvision::nms does not exist"; torchaudio links CUDA libraries), and
# llamafactory/data/mm_plugin.py imports torchaudio unconditionally. On CPU we uninstall both and put a
# stub torchaudio (configs/llama_factory/stubs, text-only SFT never calls it) on PYTHONPATH; use
# scripts/llamafactory-cli, which sets PYTHONPATH. On a GPU box set TORCH_SPEC to the CUDA build and
# KEEP_TORCHVISION=1 to keep the real wheels.
#
# Idempotent. Overrides: PYTHON, TORCH_SPEC (default torch==2.13.0, the CPU wheel), LLAMAFACTORY_SPEC,
# LLAMAFACTORY_VENV (default ./.venv-llamafactory), KEEP_TORCHVISION=1, WITH_DEEPSPEED=1 (for the ZeRO configs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LLAMAFACTORY_VENV:-.venv-llamafactory}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -c "import torch" 2>/dev/null || python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# torch named again so pip keeps the installed build instead of resolving another one.
python -m pip install -q "${LLAMAFACTORY_SPEC:-llamafactory==0.9.5}" "torch==$(python -c 'import torch; print(torch.__version__)')"
if [ "${WITH_DEEPSPEED:-0}" = 1 ]; then python -m pip install -q "${DEEPSPEED_SPEC:-deepspeed>=0.10.0,<=0.16.9}"; fi
if [ "${KEEP_TORCHVISION:-0}" != 1 ]; then
  python -m pip uninstall -q -y torchvision torchaudio 2>/dev/null || true
fi
PYTHONPATH="$(pwd)/configs/llama_factory/stubs" python -c "import llamafactory.train.tuner, llamafactory.data.mm_plugin" \
  || { echo "error: llamafactory does not import in $VENV" >&2; exit 1; }
echo "LlamaFactory environment ready: $(pwd)/$VENV ($(python -c 'import llamafactory, transformers, torch; print("llamafactory", llamafactory.__version__, "transformers", transformers.__version__, "torch", torch.__version__)'))"
echo "run it with: scripts/llamafactory-cli train configs/llama_factory/<recipe>.yaml"
