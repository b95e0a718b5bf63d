"""The merge: the task files of a work directory -> one token stream (budgets and weights applied) -> shuffled
shards (``lrc.data.token_shards.write_shards``). Only streams bytes (``memmap`` reads, sequential writes).

Per source in order: its task files in task order, the first ``budget_tokens`` tokens (``budget_sample: random``:
a random subset of its documents, ``default_rng([seed, j, 1])``); with weights, source ``j`` gets
``T * w_j / sum(w)`` of the ``T`` distinct tokens (``mix_targets``): whole repeats of the source, then a random
subset of its documents (``default_rng([seed, j])``, written in source order, the last one cut). The stream is cut
into ``T // seq_len`` sequences whose order is ``default_rng(seed).permutation``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from lrc.data.prepare.plan import Plan
from lrc.data.prepare.workdir import source_base
from lrc.data.token_shards import Shard, write_shards

COPY_TOKENS = 1 << 24
"""Tokens per copied block (the memory bound of the merge)."""


@dataclass
class Merged:
    """What the merge wrote: per source lists are in source order."""

    distinct_tokens: list[int]
    """distinct tokens of each source (after its budget)"""
    per_source_tokens: list[int]
    """tokens of each source in the stream (weights applied)"""
    distinct_documents: list[int]
    """documents (whole or cut) behind each source's distinct tokens"""
    stream_tokens: int
    """tokens in the stream, the sum of per_source_tokens"""
    num_sequences: int
    """``stream_tokens // seq_len``"""
    shards: list[Shard]
    """the shards written"""
    dropped_tokens: int
    """the stream's tail, shorter than one sequence"""


def _source_segments(work_dir: str, src: int, num_tasks: int, dt: np.dtype, budget: int | None) -> list[tuple]:
    """[(bin path, tokens taken, document lengths of those tokens), ...] of source ``src`` in task order, the first
    ``budget`` tokens (the document that crosses the budget cut)."""
    segs = []
    left = budget
    for r in range(num_tasks):
        base = source_base(work_dir, r, src)
        if not os.path.exists(base + ".bin") or (left is not None and left <= 0):
            continue
        n = os.path.getsize(base + ".bin") // dt.itemsize
        lens = np.fromfile(base + ".len", dtype=np.int64)
        take = n if left is None else min(n, left)
        if take < n:
            cum = np.cumsum(lens)
            k = int(np.searchsorted(cum, take))  # first document reaching `take`
            lens = lens[:k + 1].copy()
            lens[k] -= int(cum[k]) - take
        if take:
            segs.append((base + ".bin", take, lens))
        if left is not None:
            left -= take
    return segs


def _copy(out, path: str, take: int, dt: np.dtype) -> None:
    mm = np.memmap(path, dtype=dt, mode="r")
    for a in range(0, take, COPY_TOKENS):
        out.write(np.asarray(mm[a:min(take, a + COPY_TOKENS)]).tobytes())
    del mm


def _copy_docs(out, path: str, lens: np.ndarray, takes: np.ndarray, dt: np.dtype) -> None:
    """Write the first ``takes[i]`` tokens of every document ``i`` of the file (documents of ``lens`` tokens)."""
    starts = np.concatenate([[0], np.cumsum(lens)])
    mm = np.memmap(path, dtype=dt, mode="r")
    d0 = 0
    while d0 < lens.size:
        d1 = max(d0 + 1, int(np.searchsorted(starts, starts[d0] + COPY_TOKENS, side="right")) - 1)
        d1 = min(d1, lens.size)
        if takes[d0:d1].any():
            s0, s1 = int(starts[d0]), int(starts[d1])
            seg = np.asarray(mm[s0:s1])
            pos = np.arange(s1 - s0) - np.repeat(starts[d0:d1] - s0, lens[d0:d1])
            out.write(seg[pos < np.repeat(takes[d0:d1], lens[d0:d1])].tobytes())
        d0 = d1
    del mm


def _subset_takes(lens: np.ndarray, r: int, rng: np.random.Generator) -> np.ndarray:
    """Tokens to take of every document for a random subset of ``r`` tokens: documents in the order of a random
    permutation, whole, until ``r``; the last one cut."""
    order = rng.permutation(lens.size)
    cum = np.cumsum(lens[order])
    k = int(np.searchsorted(cum, r))  # documents order[:k] whole, order[k] cut
    takes = np.zeros(lens.size, dtype=np.int64)
    takes[order[:k]] = lens[order[:k]]
    if k < lens.size:
        takes[order[k]] = r - (int(cum[k - 1]) if k else 0)
    return takes


def _write_subset(out, segs: list[tuple], takes: np.ndarray, dt: np.dtype) -> None:
    a = 0
    for path, _, ln in segs:
        _copy_docs(out, path, ln, takes[a:a + ln.size], dt)
        a += ln.size


def mix_targets(distinct: list[int], weights: list[float | None]) -> list[int]:
    """Output tokens per source: ``distinct`` without weights; else ``T * w_j / sum(w)`` of ``T = sum(distinct)``
    over the non-empty sources (largest-remainder rounding, so the targets sum to ``T``)."""
    total = sum(distinct)
    if all(w is None for w in weights) or total == 0:
        return list(distinct)
    wsum = sum(w for w, d in zip(weights, distinct) if d > 0)
    exact = [total * w / wsum if d > 0 else 0.0 for w, d in zip(weights, distinct)]
    out = [int(math.floor(x)) for x in exact]
    for j in sorted(range(len(out)), key=lambda j: (-(exact[j] - out[j]), j))[: total - sum(out)]:
        out[j] += 1
    return out


def merge_tasks(work_dir: str, plan: Plan) -> Merged:
    """The task files of ``work_dir`` -> ``stream.tmp`` (source order, budgets and weights applied) -> shuffled
    ``shard_*.bin`` (+ ``train.jsonl``) in ``work_dir``; the temporary files are removed."""
    dt = np.dtype(plan.dtype)
    seed, seq_len = plan.seed, plan.seq_len
    stream_path = os.path.join(work_dir, "stream.tmp")
    segs = []
    for j, s in enumerate(plan.sources):
        budget = s.budget_tokens
        random_pick = s.budget_sample == "random"
        sg = _source_segments(work_dir, j, plan.tasks, dt, None if random_pick else budget)
        if random_pick and budget is not None and sum(t for _, t, _ in sg) > budget:
            lens = np.concatenate([ln for _, _, ln in sg])
            takes = _subset_takes(lens, budget, np.random.default_rng([seed, j, 1]))
            sub = os.path.join(work_dir, f"src{j:03d}.sub.tmp")
            with open(sub, "wb") as f:
                _write_subset(f, sg, takes, dt)
            sg = [(sub, budget, takes[takes > 0])]
        segs.append(sg)
    distinct = [sum(t for _, t, _ in sg) for sg in segs]
    targets = mix_targets(distinct, [s.weight for s in plan.sources])
    with open(stream_path, "wb") as out:
        for j, (sg, d, t) in enumerate(zip(segs, distinct, targets)):
            if d == 0:
                continue
            q, r = divmod(t, d)
            for _ in range(q):
                for path, take, _ in sg:
                    _copy(out, path, take, dt)
            if r:
                lens = np.concatenate([ln for _, _, ln in sg])
                _write_subset(out, sg, _subset_takes(lens, r, np.random.default_rng([seed, j])), dt)
    total = sum(targets)
    assert os.path.getsize(stream_path) == total * dt.itemsize
    num_seqs = total // seq_len
    perm = np.random.default_rng(seed).permutation(num_seqs)
    shards = []
    if num_seqs:
        stream = np.memmap(stream_path, dtype=dt, mode="r", shape=(num_seqs, seq_len))
        shards = write_shards(stream, perm, work_dir, plan.sequences_per_shard, plan.jsonl_export)
        del stream
    os.remove(stream_path)
    for sg in segs:
        for path, _, _ in sg:
            if path.endswith(".sub.tmp"):
                os.remove(path)
    return Merged(distinct_tokens=distinct, per_source_tokens=targets,
                  distinct_documents=[int(sum(ln.size for _, _, ln in sg)) for sg in segs], stream_tokens=total,
                  num_sequences=num_seqs, shards=shards, dropped_tokens=total - num_seqs * seq_len)
