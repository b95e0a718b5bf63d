"""Prepare training data: raw text / conversations (parquet, jsonl, txt, save_to_disk) -> shuffled fixed-length
token shards + manifest.json, read by ``hf_trainer.py --dataset_name DIR`` (``lrc.data.TokenShardDataset``).

    lrc prepare --inputs data/sample/train.txt --tokenizer TOKENIZER --output data/sample_shards \\
        --data-max-len 512 --workers 2
    lrc prepare --sources data/paper_mix.yaml --tokenizer /path/to/teacher --output OUT \\
        --framing official --workers 16 --jsonl-export

See ``lrc/prepare.py`` for the pipeline (datatrove tasks -> merge), the exact meaning of budgets and weights, and
the Slurm path; ``data/paper_mix.yaml`` is an annotated sources file (the paper's fineweb-edu + OpenHermes mix).
"""

from __future__ import annotations

import os
import sys



def main(inputs: str = None, tokenizer: str = None, output: str = None, data_max_len: int = 2048,
         workers: int = 1, seed: int = 0, sources: str = None, text_field: str = "text", framing: str = "bos_eos",
         filter: str = None, budget: str = None, jsonl_export: bool = False,  # noqa: A002
         sequences_per_shard: int = None, overwrite: bool = False, quiet: bool = False, tasks: int = None,
         executor: str = "local", slurm_partition: str = None, slurm_time: str = None,
         slurm_cpus_per_task: int = None, slurm_mem_per_cpu_gb: int = None, slurm_qos: str = None,
         slurm_venv: str = None, slurm_env_command: str = None, slurm_max_concurrent: int = None,
         slurm_sbatch_args: dict = None) -> None:
    """Tokenize the sources into OUTPUT (a new directory: shard_*.bin + manifest.json).

    Sources (each one is a unit for filter / budget / weight / chat and is counted in the manifest):
      --inputs   comma-separated paths / globs / save_to_disk directories, one source per entry
                 (format from the extension: .parquet, .jsonl[.gz|.xz] or .json, .txt[.gz|.xz]);
      --sources  a .json / .yaml file: a list of {path, name, format, text_field, filter, budget_tokens,
                 budget_sample, weight, chat}; path is a path / glob or a list of them; both flags may be given
                 (--inputs entries come first). --text-field, --filter and --budget are the defaults of
                 every source. Example (YAML):
                   - {path: "/data/fineweb-edu-dedup/*.parquet", filter: "int_score >= 4", budget_tokens: 10B}
                   - {path: /data/openhermes2_5.json, chat: true}
    Per-source options:
      filter         FIELD OP VALUE [and ...], OP in >= <= == != > <, e.g. "int_score >= 4"; a document
                     without the field passes; no eval
      budget_tokens  at most N distinct tokens of the source (20000, 1e10, 10B); warns if the source is smaller
      budget_sample  first (default: the first N tokens in file order; reading stops there) or random (a
                     seeded random subset of the documents; the whole source is read)
      weight         share of the output tokens = weight / sum(weights) (all sources or none); the total stays
                     the sum of the distinct tokens; documents are up/down-sampled deterministically from --seed
                     (a weighted source may exceed its budget by repeating documents)
      chat           true: render `conversations: [{from, value}]` (OpenHermes: human/gpt/system) or
                     `messages: [{role, content}]` with the tokenizer's chat template; or the field name
    Other flags:
      --tokenizer    the teacher's tokenizer: a directory, a tokenizer.json or a .gguf file
      --framing      bos_eos (BOS text EOS, default) or official (EOS text BOS, as the LRC release)
      --data-max-len sequence length (every sequence has exactly this many tokens; the tail is dropped)
      --workers / --tasks   local processes / datatrove tasks (default: tasks = workers; each task reads a
                     contiguous run of whole files); the output does not depend on either
      --seed         shuffle (and resampling) seed; same seed, same bytes
      --jsonl-export also write OUTPUT/train.jsonl in the official {"input_ids": [...]} format
      --sequences-per-shard  default: ~1 GiB shards;  --overwrite: replace OUTPUT;  --quiet: no summary
      --executor slurm  submit the tokenize job array + the merge job with datatrove's SlurmPipelineExecutor
                     (--slurm-partition required; --slurm-time [24:00:00], --slurm-cpus-per-task,
                     --slurm-mem-per-cpu-gb, --slurm-qos, --slurm-venv, --slurm-env-command,
                     --slurm-max-concurrent, --slurm-sbatch-args '{"account": "x"}'; --tasks defaults to one per
                     file); OUTPUT.tmp-slurm and OUTPUT.logs must be on a shared filesystem
    """
    from .data import DataError
    from .prepare import prepare

    if (inputs is None or inputs == "" or inputs is True) and not sources:
        raise DataError("--inputs (comma-separated paths / globs) or --sources FILE is required")
    for flag, v in (("--tokenizer", tokenizer), ("--output", output)):
        if v is None or v == "" or v is True:
            raise DataError(f"{flag} is required")
    if isinstance(inputs, (list, tuple)):
        inputs = ",".join(map(str, inputs))
    if isinstance(filter, (list, tuple)):  # fire splits "a>=1,b<2" into a tuple
        filter = [str(f) for f in filter]
    slurm = {"partition": slurm_partition, "time": slurm_time, "cpus_per_task": slurm_cpus_per_task,
             "mem_per_cpu_gb": slurm_mem_per_cpu_gb, "qos": slurm_qos, "venv_path": slurm_venv,
             "env_command": slurm_env_command, "max_concurrent": slurm_max_concurrent,
             "sbatch_args": slurm_sbatch_args}
    slurm = {k: v for k, v in slurm.items() if v is not None}
    prepare(None if inputs is None else str(inputs), str(tokenizer), str(output), data_max_len=data_max_len,
            workers=workers, seed=seed, text_field=text_field, framing=framing,
            filter=None if filter is None else filter if isinstance(filter, list) else str(filter), budget=budget,
            jsonl_export=jsonl_export, sequences_per_shard=sequences_per_shard, overwrite=overwrite, quiet=quiet,
            sources=sources, tasks=tasks, executor=executor, slurm=slurm or None)


def cli(argv: list[str] | None = None) -> int:
    """``lrc prepare`` (fire flags; ``argv`` default: sys.argv[1:]); the exit code of ``lrc.errors.run_cli``."""
    import fire

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from .errors import run_cli

    return run_cli(lambda: fire.Fire(main, command=argv, name="prepare"))


if __name__ == "__main__":
    sys.exit(cli())
