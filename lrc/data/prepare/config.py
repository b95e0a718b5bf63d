"""The options of a run, one dataclass each for ``lrc prepare``'s flags and the library's ``prepare(...)``
keywords: :class:`PrepareConfig` and, for ``--executor slurm``, :class:`SlurmOptions`. Field docstrings are the
``--help`` text (``lrc.cli.options``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lrc.cli.options import options
from lrc.errors import DataError

EXECUTORS = ("local", "slurm")


@options(group="lrc prepare")
class PrepareConfig:
    """What to tokenize, how, and where to."""

    inputs: str | None = None
    """comma-separated paths / globs / save_to_disk directories, one source per entry (format from the extension:
    .parquet, .jsonl[.gz|.xz] or .json, .txt[.gz|.xz]); they come before the --sources entries"""
    tokenizer: str | None = None
    """required: the teacher's tokenizer: a directory, a tokenizer.json or a .gguf file"""
    output: str | None = None
    """required: the output directory, new (shard_*.bin + manifest.json), unless --overwrite"""
    data_max_len: int = 2048
    """sequence length: every sequence has exactly this many tokens (the stream's tail is dropped)"""
    workers: int = 1
    """local worker processes; the output does not depend on it"""
    seed: int = 0
    """shuffle (and resampling) seed; same seed, same bytes"""
    sources: str | None = None
    """a .json / .yaml file: a list of {path, name, format, text_field, filter, budget_tokens, budget_sample,
    weight, chat} (path: a path / glob or a list of them), e.g. - {path: "/data/fineweb-edu-dedup/*.parquet",
    filter: "int_score >= 4", budget_tokens: 10B}; from Python also the parsed list"""
    text_field: str = "text"
    """the column / JSON key holding the text (default of every source)"""
    framing: str = "bos_eos"
    """bos_eos (BOS text EOS) or official (EOS text BOS, as the LRC release); a special token the tokenizer lacks
    is left out"""
    filter: str | None = None
    """FIELD OP VALUE [and ...], OP in >= <= == != > <, e.g. "int_score >= 4"; a document without the field
    passes; never eval-ed (default of every source)"""
    budget: str | None = None
    """at most N distinct tokens of each source (20000, 1e10, 10B; default of every source's budget_tokens); a
    smaller source is used whole, with a warning"""
    jsonl_export: bool = False
    """also write OUTPUT/train.jsonl in the official {"input_ids": [...]} format, in the order of the shards"""
    sequences_per_shard: int | None = None
    """sequences per shard file (default: ~1 GiB shards)"""
    overwrite: bool = False
    """replace OUTPUT"""
    quiet: bool = False
    """no summary"""
    tasks: int | None = None
    """datatrove tasks, each a contiguous run of whole files (default: --workers; on Slurm one per file); the
    output does not depend on it"""
    executor: str = "local"
    """local, or slurm: submit the tokenize job array and the merge job with datatrove's SlurmPipelineExecutor
    (needs --slurm-partition; OUTPUT.tmp-slurm and OUTPUT.logs must be on a shared filesystem)"""


@options(group="Slurm (--executor slurm)")
class SlurmOptions:
    """The Slurm jobs of ``--executor slurm``; None: datatrove's default, or the one named."""

    slurm_partition: str | None = None
    """required with --executor slurm: the partition of both jobs"""
    slurm_time: str | None = None
    """time limit of the tokenize tasks (default 24:00:00)"""
    slurm_cpus_per_task: int | None = None
    """CPUs per tokenize task (default 1)"""
    slurm_mem_per_cpu_gb: int | None = None
    """memory per CPU of the tokenize tasks, GB (default 2)"""
    slurm_qos: str | None = None
    """quality of service of both jobs"""
    slurm_venv: str | None = None
    """virtual environment the jobs activate"""
    slurm_env_command: str | None = None
    """shell command the jobs run first (e.g. module load ...)"""
    slurm_condaenv: str | None = None
    """conda environment the jobs activate"""
    slurm_max_concurrent: int | None = None
    """at most this many tokenize tasks at once (default: no limit)"""
    slurm_sbatch_args: str | None = None
    """more sbatch options, a JSON object, e.g. '{"account": "x"}'"""
    slurm_job_name: str | None = None
    """job name prefix (default lrc-prepare-<output name>)"""
    slurm_merge_time: str | None = None
    """time limit of the merge job (default: --slurm-time)"""
    slurm_merge_mem_per_cpu_gb: int | None = None
    """memory of the merge job, GB (default 8)"""

    def given(self) -> bool:
        """Whether any option is set."""
        return any(v is not None for v in vars(self).values())

    def sbatch_args(self) -> dict[str, Any] | None:
        """``slurm_sbatch_args`` parsed: {option: value} or None."""
        if not self.slurm_sbatch_args:
            return None
        try:
            args = json.loads(self.slurm_sbatch_args)
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise DataError(f"--slurm-sbatch-args: expected a JSON object such as '{{\"account\": \"x\"}}', got "
                            f"{self.slurm_sbatch_args!r}")
        return args

    @classmethod
    def from_dict(cls, opts: dict[str, Any] | None) -> SlurmOptions:
        """The library form ``{partition, time, cpus_per_task, mem_per_cpu_gb, qos, venv_path, env_command,
        condaenv, sbatch_args (a dict), max_concurrent, job_name, merge_time, merge_mem_per_cpu_gb}`` (each key the
        field name without ``slurm_``, ``venv_path`` for ``slurm_venv``) -> SlurmOptions."""
        known = {f.name.removeprefix("slurm_"): f.name for f in dataclasses.fields(cls)}
        known["venv_path"] = known.pop("venv")
        opts = {k: v for k, v in (opts or {}).items() if v is not None}
        bad = sorted(set(opts) - set(known))
        if bad:
            raise DataError(f"unknown Slurm option(s) {', '.join(bad)}; accepted: {', '.join(sorted(known))}")
        if isinstance(opts.get("sbatch_args"), dict):
            opts["sbatch_args"] = json.dumps(opts["sbatch_args"])
        return cls(**{known[k]: v for k, v in opts.items()})
