"""The end of a run: merge the finished tasks, write the manifest, publish the work directory as the output, and
the summary printed after it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lrc.data.prepare.merge import Merged, merge_tasks
from lrc.data.prepare.plan import Plan
from lrc.data.prepare.sources import Source
from lrc.data.prepare.workdir import DONE_SUFFIX, PLAN, READ_SUFFIX, TASKS, task_errors, task_path
from lrc.data.token_shards import JSONL_EXPORT, Manifest
from lrc.errors import DataError
from lrc.files import publish_dir


def source_stats(s: Source, merged: Merged, j: int, read: int, kept: int, wsum: float | None) -> dict[str, Any]:
    """Source ``j``'s entry of ``manifest["sources"]``: its options and counts (``target_share`` with weights)."""
    d, t = merged.distinct_tokens[j], merged.per_source_tokens[j]
    total = max(1, merged.stream_tokens)
    info = {"input": s.name, "paths": s.paths, "files": len(s.files), "format": s.format,
            "text_field": s.text_field, "filter": s.filter, "chat": s.chat, "budget_tokens": s.budget_tokens,
            "budget_sample": s.budget_sample, "weight": s.weight, "documents_read": read, "documents_kept": kept,
            "distinct_documents": merged.distinct_documents[j], "distinct_tokens": d, "tokens": t,
            "share": round(t / total, 6), "repeat": round(t / d, 6) if d else None}
    if wsum:
        info["target_share"] = round(s.weight / wsum, 6)
    return info


def _warn_short_sources(sources: list[Source], merged: Merged) -> None:
    """A warning per source smaller than its budget, and per weighted source without tokens."""
    for s, d in zip(sources, merged.distinct_tokens):
        if s.budget_tokens is not None and d < s.budget_tokens:
            print(f"warning: {s.name}: budget {s.budget_tokens} tokens is larger than the source ({d} "
                  "tokens); all of it is used", file=sys.stderr)
        if s.weight is not None and d == 0:
            print(f"warning: {s.name}: no tokens, so its weight {s.weight} cannot be met; the other sources "
                  "share the output", file=sys.stderr)


def finalize(work: str, tokenize_seconds: float | None = None) -> Manifest:
    """Merge the finished tasks of ``work`` (its ``plan.json``), write shards + manifest, rename ``work`` to the
    output and print the summary (unless quiet). A task's bad input, an unfinished task or too few tokens for one
    sequence raise DataError."""
    errors = task_errors(work)
    if errors:
        raise DataError(errors[0])
    plan = Plan.read(work)
    srcs = plan.sources
    read = np.zeros(len(srcs), dtype=np.int64)
    kept = np.zeros(len(srcs), dtype=np.int64)
    for r in range(plan.tasks):
        for suffix in (READ_SUFFIX, DONE_SUFFIX):
            if not os.path.exists(task_path(work, r, suffix)):
                raise DataError(f"task {r} did not finish (no {os.path.basename(task_path(work, r, suffix))}); "
                                "see the logs")
        rj = json.loads(Path(task_path(work, r, READ_SUFFIX)).read_text())
        read += rj["documents_read"]
        kept += rj["documents_kept"]
    merged = merge_tasks(work, plan)
    wsum = sum(s.weight for s in srcs if s.weight is not None) or None
    src_info = [source_stats(s, merged, j, int(read[j]), int(kept[j]), wsum) for j, s in enumerate(srcs)]
    _warn_short_sources(srcs, merged)
    if merged.num_sequences == 0:
        raise DataError(f"{', '.join(s.name for s in srcs)}: only {merged.stream_tokens} tokens, fewer than "
                        f"one sequence of {plan.seq_len}")
    elapsed = time.time() - (plan.started if plan.started is not None else time.time())
    tk = plan.tokenizer
    manifest = Manifest(
        total_tokens=merged.num_sequences * plan.seq_len, stream_tokens=merged.stream_tokens,
        dropped_tokens=merged.dropped_tokens, num_sequences=merged.num_sequences, seq_len=plan.seq_len,
        dtype=plan.dtype, vocab_size=tk.vocab_size, tokenizer=tk.path, tokenizer_name=tk.name, bos_id=tk.bos_id,
        eos_id=tk.eos_id, framing=plan.framing, seed=plan.seed, filter=plan.defaults.filter,
        text_field=plan.defaults.text_field, budget=plan.defaults.budget_tokens, executor=plan.executor,
        workers=plan.workers, tasks=plan.tasks, sources=src_info, shards=merged.shards,
        jsonl_export=JSONL_EXPORT if plan.jsonl_export else None,
        tokenize_seconds=None if tokenize_seconds is None else round(tokenize_seconds, 3),
        seconds=round(elapsed, 3))
    manifest.write(work)
    shutil.rmtree(os.path.join(work, TASKS))
    os.remove(os.path.join(work, PLAN))
    if os.path.exists(plan.output) and not plan.overwrite:
        raise DataError(f"{plan.output}: appeared while preparing (pass --overwrite to replace it)")
    publish_dir(work, plan.output)
    if not plan.quiet:
        print(summary(manifest, plan.output))
    return manifest


def summary(m: Manifest, output: str) -> str:
    """What was written, per source, and how fast: a few lines."""
    lines = [f"wrote {output}: {m.num_sequences} sequences x {m.seq_len} tokens = {m.total_tokens} tokens "
             f"({m.dtype}, {len(m.shards)} shard(s); {m.dropped_tokens} tail tokens dropped)"]
    for s in m.sources:
        extra = ""
        if s.get("repeat") not in (None, 1.0):
            extra = f" ({s['distinct_tokens']} distinct, x{s['repeat']:.3f})"
        lines.append(f"  {s['input']}: {s['files']} file(s), documents read {s['documents_read']}, kept "
                     f"{s['documents_kept']}, tokens {s['tokens']}{extra}, share {s['share']:.1%}")
    tps = m.stream_tokens / max(m.seconds, 1e-9)
    tok_s = "" if m.tokenize_seconds is None else f" ({m.tokenize_seconds:.2f} s tokenizing"
    lines.append(f"  {m.seconds:.2f} s total{tok_s}{', ' if tok_s else ' ('}{m.tasks} task(s), "
                 f"{m.workers} worker(s)), {tps:,.0f} tokens/s")
    return "\n".join(lines)
