"""The plan of a run (:class:`Plan`, ``plan.json`` in the work directory): every option checked, the sources
resolved, the tokenizer loaded once, before any task starts (``make_plan``)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrc.data.prepare.config import EXECUTORS, PrepareConfig
from lrc.data.prepare.filters import parse_filter
from lrc.data.prepare.sources import Source, parse_count, resolve_sources
from lrc.data.prepare.tokenizer import TokenizerSpec
from lrc.data.prepare.workdir import PLAN
from lrc.data.token_shards import FRAMINGS, default_sequences_per_shard, shard_dtype
from lrc.errors import DataError
from lrc.files import write_json_atomic


@dataclass
class SourceDefaults:
    """The global per-source options (recorded in the manifest)."""

    text_field: str
    """``--text-field``"""
    filter: str | None
    """``--filter``, normalised (None: none)"""
    budget_tokens: int | None
    """``--budget`` in tokens (None: none)"""


@dataclass
class TokenizerInfo:
    """The tokenizer as recorded in the manifest."""

    path: str
    """absolute path"""
    name: str
    """its ``name_or_path``"""
    vocab_size: int
    bos_id: int | None
    eos_id: int | None


@dataclass
class Plan:
    """Everything the tasks and the merge need; ``plan.json`` is ``to_json()`` (``started`` once a run starts)."""

    output: str
    """absolute path of the output directory"""
    overwrite: bool
    """replace an existing output"""
    executor: str
    """``local`` or ``slurm``"""
    tasks: int
    """datatrove tasks (at most one per input file)"""
    workers: int
    """local worker processes"""
    seq_len: int
    """tokens per sequence"""
    dtype: str
    """shard dtype (``lrc.data.token_shards.shard_dtype``)"""
    seed: int
    """shuffle / resampling seed"""
    framing: str
    """``bos_eos`` or ``official``"""
    sequences_per_shard: int
    jsonl_export: bool
    """also write ``train.jsonl``"""
    quiet: bool
    """no summary"""
    defaults: SourceDefaults
    tokenizer: TokenizerInfo
    sources: list[Source]
    """the resolved sources, in order"""
    started: float | None = None
    """``time.time()`` when the run started (written to ``plan.json``)"""
    job_ids: dict[str, str] | None = None
    """Slurm only, after submitting: ``{"tokenize": id, "merge": id}`` (not in ``plan.json``)"""

    def files(self) -> list[tuple[int, str, str]]:
        """Every input file in source order: ``[(source index, path, format), ...]``."""
        return [(j, f, fmt) for j, s in enumerate(self.sources) for f, fmt in s.files]

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``plan.json`` (``started`` and ``job_ids`` only when set)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(defaults=dataclasses.asdict(self.defaults), tokenizer=dataclasses.asdict(self.tokenizer),
                   sources=[s.to_json() for s in self.sources])
        return {k: v for k, v in out.items() if v is not None or k not in ("started", "job_ids")}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Plan:
        return cls(**dict(obj, defaults=SourceDefaults(**obj["defaults"]), tokenizer=TokenizerInfo(**obj["tokenizer"]),
                          sources=[Source.from_json(s) for s in obj["sources"]]))

    def write(self, work: str) -> None:
        """Write ``work/plan.json`` atomically."""
        write_json_atomic(os.path.join(work, PLAN), self.to_json())

    @classmethod
    def read(cls, work: str) -> Plan:
        return cls.from_json(json.loads(Path(work, PLAN).read_text()))


def _check_int(v: Any, flag: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DataError(f"{flag} must be a positive integer, got {v!r}")
    return v


def make_plan(config: PrepareConfig) -> tuple[Plan, TokenizerSpec]:
    """Check every option of ``config``, resolve its sources (files expanded and checked), load the tokenizer (and
    check it has a chat template when a source needs one) -> ``(plan, tokenizer)``. Creates nothing; a bad option
    or input raises DataError."""
    c = config
    _check_int(c.data_max_len, "--data-max-len")
    _check_int(c.workers, "--workers")
    if c.tasks is not None:
        _check_int(c.tasks, "--tasks")
    if isinstance(c.seed, bool) or not isinstance(c.seed, int) or c.seed < 0:
        raise DataError(f"--seed must be a non-negative integer, got {c.seed!r}")
    if c.framing not in FRAMINGS:
        raise DataError(f"--framing must be one of {', '.join(FRAMINGS)}, got {c.framing!r}")
    if c.executor not in EXECUTORS:
        raise DataError(f"--executor must be one of {', '.join(EXECUTORS)}, got {c.executor!r}")
    if not c.output:
        raise DataError("--output is required")
    if not c.tokenizer:
        raise DataError("--tokenizer is required")
    output = os.path.abspath(os.fspath(c.output))
    if os.path.exists(output) and not c.overwrite:
        raise DataError(f"{output}: already exists (pass --overwrite to replace it)")
    budget = parse_count(c.budget, "--budget")
    try:
        default_filter = parse_filter(c.filter)
    except DataError as e:
        raise DataError(f"--filter: {e}") from None
    srcs = resolve_sources(c.inputs, c.sources, c.text_field, c.filter, budget)
    chat = [s.name for s in srcs if s.chat]
    tok = TokenizerSpec(c.tokenizer)
    if chat and not tok.chat_template:
        raise DataError(f"{c.tokenizer}: the tokenizer has no chat template, needed to render the conversations of "
                        f"{', '.join(chat)} (give the teacher's tokenizer, or a text field instead of chat)")
    dtype = shard_dtype(tok.vocab_size)
    num_files = sum(len(s.files) for s in srcs)
    tasks = c.tasks
    if tasks is None:
        tasks = c.workers if c.executor == "local" else num_files
    sequences_per_shard = c.sequences_per_shard
    if sequences_per_shard is None:
        sequences_per_shard = default_sequences_per_shard(dtype, c.data_max_len)
    _check_int(sequences_per_shard, "--sequences-per-shard")
    plan = Plan(
        output=output, overwrite=bool(c.overwrite), executor=c.executor, tasks=min(tasks, num_files),  # no idle task
        workers=c.workers, seq_len=c.data_max_len, dtype=dtype, seed=c.seed, framing=c.framing,
        sequences_per_shard=sequences_per_shard, jsonl_export=bool(c.jsonl_export), quiet=bool(c.quiet),
        defaults=SourceDefaults(text_field=c.text_field, filter=default_filter.spec if default_filter else None,
                                budget_tokens=budget),
        tokenizer=TokenizerInfo(path=os.path.abspath(tok.path), name=tok.name, vocab_size=tok.vocab_size,
                                bos_id=tok.bos_id, eos_id=tok.eos_id),
        sources=srcs)
    return plan, tok
