#!/usr/bin/env bash
# lm-eval benchmarks of a converted student: a thin wrapper over `python -m lrc.after.harness`, which holds the
# task lists, the metric reported per task, the per-task batch sizes and the paper's numbers.
#
#   scripts/eval.sh MODEL [TASKS|paper|all] [--fewshot N] [more lrc.after.harness flags]
#
# paper = sciq,piqa,winogrande,arc_easy,logiqa,arc_challenge,boolq,mmlu,commonsense_qa (the paper's 9, 0-shot)
# all   = the 12 tasks of the official scripts/eval.sh (adds hellaswag, openbookqa, truthfulqa_mc2)
# Other flags: --device auto|cpu|cuda[:N]  --dtype  --batch_size  --limit  --include_path DIR  --output_dir
#              --reference FILE.json  --heldout FILE  (python -m lrc.after.harness --help lists them all)
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
usage() {  # the header above, "usage:" first
  echo "usage: scripts/eval.sh MODEL [TASKS|paper|all] [--fewshot N] [more lrc.after.harness flags]"
  sed -n '7,10p' "$0" | sed 's/^# \{0,1\}//'
}
if [ $# -lt 1 ] || [ -z "${1:-}" ]; then echo "error: MODEL is required" >&2; usage >&2; exit 2; fi
case "$1" in
  -h|--help) usage; exit 0 ;;
  -*) echo "error: the first argument must be MODEL (a converted student directory), got option $1" >&2; usage >&2; exit 2 ;;
esac
MODEL="$1"; shift
TASKS=paper
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then TASKS="$1"; shift; fi
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
exec env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m lrc.after.harness --model "$MODEL" --tasks "$TASKS" "$@"
