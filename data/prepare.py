#!/usr/bin/env python
"""Prepare training data: raw text (parquet / jsonl / txt) -> shuffled fixed-length token shards + manifest.json.

    python data/prepare.py --inputs data/sample/train.txt --tokenizer TOKENIZER --output data/sample_shards \\
        --data-max-len 512 --workers 2

See ``lrc/prepare.py`` for the pipeline (datatrove tasks -> merge) and how it scales to Slurm; the output
directory is read by ``hf_trainer.py --dataset_name DIR`` (``lrc.data.TokenShardDataset``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(inputs: str = None, tokenizer: str = None, output: str = None, data_max_len: int = 2048,
         workers: int = 1, seed: int = 0, text_field: str = "text", framing: str = "bos_eos",
         filter: str = None, budget: int = None, jsonl_export: bool = False,  # noqa: A002
         sequences_per_shard: int = None, overwrite: bool = False, quiet: bool = False) -> None:
    """Tokenize ``inputs`` (comma-separated paths/globs, one source each) into ``output`` (a new directory).

    --framing bos_eos (BOS text EOS, default) or official (EOS text BOS, as the LRC release);
    --filter e.g. int_score>=4 (a document without the field passes); --budget: max tokens per source;
    --jsonl-export: also write output/train.jsonl in the official {"input_ids": [...]} format.
    """
    from lrc.data import DataError
    from lrc.prepare import prepare

    for flag, v in (("--inputs", inputs), ("--tokenizer", tokenizer), ("--output", output)):
        if v is None or v == "" or v is True:
            raise DataError(f"{flag} is required")
    if isinstance(inputs, (list, tuple)):
        inputs = ",".join(map(str, inputs))
    prepare(str(inputs), str(tokenizer), str(output), data_max_len=data_max_len, workers=workers, seed=seed,
            text_field=text_field, framing=framing, filter=None if filter is None else str(filter), budget=budget,
            jsonl_export=jsonl_export, sequences_per_shard=sequences_per_shard, overwrite=overwrite, quiet=quiet)


def cli(argv: list[str] | None = None) -> int:
    import fire

    from lrc.cli_errors import run_cli

    return run_cli(lambda: fire.Fire(main, command=argv, name="prepare"))


if __name__ == "__main__":
    sys.exit(cli())
