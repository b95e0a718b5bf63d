"""Prepare training data: raw text / conversations (parquet, jsonl, txt, save_to_disk) -> shuffled fixed-length
token shards + manifest.json, read by ``lrc train --dataset_name DIR`` (``lrc.data.datasets.TokenShardDataset``).

    lrc prepare --inputs data/sample/train.txt --tokenizer TOKENIZER --output data/sample_shards \\
        --data-max-len 512 --workers 2
    lrc prepare --sources data/paper_mix.yaml --tokenizer /path/to/teacher --output OUT \\
        --framing official --workers 16 --jsonl-export

Sources: every --inputs entry and every entry of the --sources file is one source, the unit of filter, budget,
weight and chat, counted on its own in the manifest (--inputs entries come first). --text-field, --filter and
--budget are the defaults of every source. A sources file entry (YAML):
    - {path: "/data/fineweb-edu-dedup/*.parquet", filter: "int_score >= 4", budget_tokens: 10B}
    - {path: /data/openhermes2_5.json, chat: true}
Per-source options:
  filter         FIELD OP VALUE [and ...], OP in >= <= == != > <, e.g. "int_score >= 4"; a document without the
                 field passes; no eval
  budget_tokens  at most N distinct tokens of the source (20000, 1e10, 10B); warns if the source is smaller
  budget_sample  first (default: the first N tokens in file order; reading stops there) or random (a seeded
                 random subset of the documents; the whole source is read)
  weight         share of the output tokens = weight / sum(weights) (all sources or none); the total stays the
                 sum of the distinct tokens; documents are up/down-sampled deterministically from --seed (a
                 weighted source may exceed its budget by repeating documents)
  chat           true: render `conversations: [{from, value}]` (OpenHermes: human/gpt/system) or
                 `messages: [{role, content}]` with the tokenizer's chat template; or the field name
The output does not depend on --workers / --tasks. ``lrc.data.prepare`` (its package docstring) gives the pipeline, the
exact meaning of budgets and weights, and the Slurm path; ``data/paper_mix.yaml`` is an annotated sources file
(the paper's fineweb-edu + OpenHermes mix).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lrc.cli.options import from_keywords, run_command
from lrc.data.prepare import PrepareConfig, SlurmOptions, run_prepare
from lrc.errors import DataError

OPTION_GROUPS = (PrepareConfig, SlurmOptions)


def run(config: PrepareConfig, slurm: SlurmOptions | None = None) -> None:
    """``lrc prepare`` with parsed options: the required flags checked, then ``lrc.data.prepare.run_prepare``."""
    if not config.inputs and not config.sources:
        raise DataError("--inputs (comma-separated paths / globs) or --sources FILE is required")
    for flag, v in (("--tokenizer", config.tokenizer), ("--output", config.output)):
        if not v:
            raise DataError(f"{flag} is required")
    run_prepare(config, slurm)


def main(**options: Any) -> None:
    """``lrc prepare`` for keyword arguments: the field names of PrepareConfig and SlurmOptions (``inputs=...,
    tokenizer=..., output=..., data_max_len=512, slurm_partition=...``)."""
    run(*from_keywords(OPTION_GROUPS, options, prog="lrc prepare"))


def cli(argv: list[str] | None = None) -> int:
    """``lrc prepare`` (flags: ``--help``; ``argv`` default: sys.argv[1:]); the exit code of ``lrc.errors.run_cli``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_command(OPTION_GROUPS, argv, run, prog="lrc prepare", description=__doc__)


if __name__ == "__main__":
    sys.exit(cli())
