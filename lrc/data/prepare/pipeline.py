"""Running a plan: locally (datatrove's LocalPipelineExecutor, then the merge) or as Slurm jobs (the tokenize job
array, then the merge job); ``prepare(...)``, the library's entry point."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from typing import Any

from lrc.data.prepare.config import PrepareConfig, SlurmOptions
from lrc.data.prepare.finalize import finalize
from lrc.data.prepare.plan import Plan, make_plan
from lrc.data.prepare.steps import FinalizeStep, SourceReader, TokenFileWriter
from lrc.data.prepare.tokenizer import TokenizerSpec
from lrc.data.token_shards import Manifest
from lrc.errors import DataError


def prepare(inputs: Any = None, tokenizer: str | None = None, output: str | None = None, *,
            slurm: dict[str, Any] | SlurmOptions | None = None, progress: bool = True, **options: Any) -> dict:
    """Build token shards in ``output`` -> the manifest as a dict (``lrc.data.token_shards.Manifest.to_json()``); with
    ``executor="slurm"``, submit the jobs -> the plan as a dict (``Plan.to_json()``, with ``job_ids``).

    ``options``: the other fields of :class:`PrepareConfig` (``data_max_len``, ``workers``, ``sources``, ...; see
    its field docs). ``slurm``: :class:`SlurmOptions`, or its dict form (``SlurmOptions.from_dict``).
    ``progress``: a progress bar per task.
    """
    slurm = slurm if isinstance(slurm, SlurmOptions) else SlurmOptions.from_dict(slurm)
    config = PrepareConfig(inputs=inputs, tokenizer=tokenizer, output=output, **options)
    return run_prepare(config, slurm, progress=progress).to_json()


def run_prepare(config: PrepareConfig, slurm: SlurmOptions | None = None, *, progress: bool = True
                ) -> Manifest | Plan:
    """Plan ``config`` and run it: locally -> the Manifest; with ``executor="slurm"`` submit the jobs -> the Plan
    (with ``job_ids``)."""
    slurm = slurm or SlurmOptions()
    if slurm.given() and config.executor != "slurm":  # before the plan: it loads the tokenizer and expands globs
        raise DataError("--slurm-* options need --executor slurm")
    t0 = time.time()
    plan, tok = make_plan(config)
    if plan.executor == "slurm":
        return submit_slurm(plan, tok, slurm)
    return run_local(plan, tok, started=t0, progress=progress)


def build_pipeline(plan: Plan, tok: TokenizerSpec, work: str, progress: bool = True) -> list:
    """The tokenize pipeline of every task: [SourceReader, TokenFileWriter] (sharing the stopped-source set)."""
    stop: set = set()
    return [
        SourceReader(plan.files(), plan.sources, work, stop, tok=tok, framing=plan.framing, progress=progress),
        TokenFileWriter(tok, plan.framing, plan.dtype, work,
                        [s.budget_tokens if s.budget_sample == "first" else None for s in plan.sources], stop),
    ]


def _quiet_datatrove_logs() -> None:
    from datatrove.utils.logging import logger

    logger.remove()  # datatrove logs per task into the logging dir; keep the console for progress and errors
    logger.add(sys.stderr, level="WARNING", format="{level}: {message}")


def run_local(plan: Plan, tok: TokenizerSpec, started: float, progress: bool = True) -> Manifest:
    """Tokenize with ``plan.tasks`` tasks on ``plan.workers`` processes in ``<output>.tmp-<pid>``, then merge and
    publish it as the output; on any failure the work directory is removed (a DataError of a task is re-raised
    as it was)."""
    output = plan.output
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    work = f"{output}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "tasks"))
    try:
        plan.started = started
        plan.write(work)
        from datatrove.executor import LocalPipelineExecutor

        _quiet_datatrove_logs()
        pipeline = build_pipeline(plan, tok, work, progress=progress and not plan.quiet)
        ex = LocalPipelineExecutor(pipeline, tasks=plan.tasks, workers=min(plan.workers, plan.tasks),
                                   logging_dir=os.path.join(work, "logs"), skip_completed=False)
        t_tok = time.time()
        try:
            ex.run()
        except DataError:
            raise
        except Exception as e:  # a task failed: surface a DataError raised inside a worker process
            cur: BaseException | None = e
            while cur is not None:
                if isinstance(cur, DataError) or type(cur).__name__ == "DataError":
                    raise DataError(str(cur)) from None
                cur = cur.__cause__ or cur.__context__
            raise
        return finalize(work, tokenize_seconds=time.time() - t_tok)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def submit_slurm(plan: Plan, tok: TokenizerSpec, opts: SlurmOptions) -> Plan:
    """Submit the tokenize job array and the merge job (afterok) with datatrove's SlurmPipelineExecutor; the work
    directory ``<output>.tmp-slurm`` is reused when it holds the same plan (datatrove resubmits only unfinished
    tasks). Returns the plan with ``job_ids``."""
    from datatrove.executor import SlurmPipelineExecutor

    if not opts.slurm_partition:
        raise DataError("--executor slurm needs --slurm-partition")
    if shutil.which("sbatch") is None:
        raise DataError("--executor slurm: no sbatch command here; run it on a Slurm login node")
    sbatch_args = opts.sbatch_args()
    output = plan.output
    work = f"{output}.tmp-slurm"
    logs = f"{output}.logs"
    if os.path.exists(work):
        try:
            old = Plan.read(work)
        except (OSError, ValueError, TypeError, KeyError):
            old = None
        if old is None or dataclasses.replace(old, started=None) != plan:
            raise DataError(f"{work}: exists from another run (or a finished merge); remove it and {logs} to start "
                            "over")
        plan.started = old.started
    else:
        os.makedirs(os.path.join(work, "tasks"))
        plan.started = time.time()
        plan.write(work)
    _quiet_datatrove_logs()
    name = opts.slurm_job_name or f"lrc-prepare-{os.path.basename(output)}"
    common = {k: v for k, v in (("qos", opts.slurm_qos), ("venv_path", opts.slurm_venv),
                                ("env_command", opts.slurm_env_command), ("condaenv", opts.slurm_condaenv))
              if v is not None}
    time_limit = _or(opts.slurm_time, "24:00:00")
    tok_ex = SlurmPipelineExecutor(
        build_pipeline(plan, tok, work, progress=False), tasks=plan.tasks, time=time_limit,
        partition=opts.slurm_partition, cpus_per_task=int(_or(opts.slurm_cpus_per_task, 1)),
        mem_per_cpu_gb=int(_or(opts.slurm_mem_per_cpu_gb, 2)), workers=int(_or(opts.slurm_max_concurrent, -1)),
        job_name=f"{name}-tokenize", logging_dir=os.path.join(logs, "tokenize"), sbatch_args=sbatch_args or None,
        **common)
    merge_ex = SlurmPipelineExecutor(
        [FinalizeStep(work)], tasks=1, time=_or(opts.slurm_merge_time, time_limit), partition=opts.slurm_partition,
        cpus_per_task=1, mem_per_cpu_gb=int(_or(opts.slurm_merge_mem_per_cpu_gb, 8)), job_name=f"{name}-merge",
        logging_dir=os.path.join(logs, "merge"), depends=tok_ex, sbatch_args=sbatch_args or None, **common)
    merge_ex.run()
    plan.job_ids = {"tokenize": tok_ex.job_id, "merge": merge_ex.job_id}
    if not plan.quiet:
        print(f"submitted Slurm jobs: tokenize {tok_ex.job_id} ({plan.tasks} tasks), merge {merge_ex.job_id} "
              f"(after the tokenize job succeeds); work directory {work}, logs {logs}; {output} appears when the "
              "merge job finishes (its summary is in the merge job's log)")
    return plan


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
