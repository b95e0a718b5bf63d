"""``lrc``: one command, one subcommand per step of the workflow.

    lrc train --demo                         # distil SmolLM2-135M on the shipped sample (minutes on a CPU)
    lrc prepare --inputs DATA --tokenizer TEACHER --output SHARDS
    lrc train --raw-model-name TEACHER --dataset_name SHARDS --output_dir OUT --target_hidden_size 1536
    lrc convert --ckpt-path OUT --save-path OUT/student
    lrc onpolicy --student OUT/student --teacher TEACHER --prompts PROMPTS.jsonl --output_dir OUT/onpolicy
    lrc eval --model OUT/student --data HELDOUT.txt
    lrc harness --model OUT/student --tasks paper
    lrc bench --teacher smollm2-135m --target-hidden-size 288

``lrc SUBCOMMAND --help`` lists that subcommand's flags. The official script names keep working verbatim
(``hf_trainer.py``, ``convert_ckpt.py``, ``data/prepare.py``, ``data/generate_general_data_parallel.py``), and
``accelerate launch ... hf_trainer.py ...`` is how several processes are started.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lrc.training.command", "distil a student from a teacher (the official command line; --demo: the out-of-the-box run)"),
    "prepare": ("lrc.data.prepare.cli", "tokenize raw text / conversations into shuffled token shards + manifest"),
    "convert": ("lrc.after.convert_cli", "fold a trained LRC checkpoint into a standard Hugging Face model directory"),
    "onpolicy": ("lrc.onpolicy.run", "on-policy distillation of a converted student from its teacher (TRL's "
                                     "DistillationTrainer, after LRC)"),
    "eval": ("lrc.after.evaluate", "held-out cross-entropy and perplexity of a model (student, teacher or .gguf)"),
    "harness": ("lrc.after.harness", "lm-eval benchmarks of a converted student (the paper's tasks), results.md beside "
                               "the paper's numbers"),
    "bench": ("lrc.training.bench", "step-speed benchmark: teacher forward, student step, LRC step, their ratio"),
}
"""Subcommand -> (module whose ``cli(argv) -> exit code`` runs it, one-line description)."""


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def _entry(name: str) -> Callable[[list[str]], int | None]:
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return module.cli


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: sys.argv[1:]) to its subcommand; the process's exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}; one of {', '.join(SUBCOMMANDS)} (lrc --help)", file=sys.stderr)
        return 2
    code = _entry(name)(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
