"""Validate a packed jsonl file completely before training starts, and index its lines.

Every non-blank line must be a JSON object whose ``input_ids`` is a list of at least 2 integers in
``[0, vocab_size)``. The first bad line stops the check with ``file:line`` and what was wrong, so a
run never fails hours in, after checkpoints exist (and never crash-loops on resume).

Cost (docs/BENCHMARKS.md): ~19 s of CPU per GB of 2048-token lines (orjson + numpy); files over
256 MB are split into byte ranges checked by up to 16 processes, with a progress bar. The verdict
and the line offsets are cached by file identity (``lrc.file_cache``: path, size, mtime, inode) and
vocabulary size, so a restart or a resume of the same run pays nothing. This module imports no torch:
the worker processes start fast.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson comes with the requirements
    _loads = json.loads

PARALLEL_FROM_BYTES = 256 << 20
_RANGE_BYTES = 64 << 20
_MAX_WORKERS = 16


class LineProblem(Exception):
    """(byte offset of the line, message): raised inside a worker, turned into file:line by the caller."""


def _first_non_int(ids: list) -> str | None:
    for k, t in enumerate(ids):
        if type(t) is not int:
            return f"input_ids[{k}] is {json.dumps(t)}, expected an integer token id"
    return None


def check_ids(obj: object, vocab_size: int, raw: bytes | None = None) -> str | None:
    """None if ``obj`` is a valid packed-jsonl record, else what is wrong (without the location).

    ``raw`` (the line's bytes) enables a fast path: numpy checks the types, and the exact per-element
    check runs only when the line could hold a JSON boolean (which numpy would read as 0/1).
    """
    if not isinstance(obj, dict):
        return f"expected a JSON object with an 'input_ids' list, got {type(obj).__name__}"
    ids = obj.get("input_ids")
    if not isinstance(ids, list):
        return "no 'input_ids' list"
    if len(ids) < 2:
        return (f"'input_ids' has {len(ids)} token{'s' if len(ids) != 1 else ''}; a sequence needs at least 2 "
                f"(one to read, one to predict)")
    if raw is None or b"true" in raw or b"false" in raw:
        problem = _first_non_int(ids)
        if problem:
            return problem
    try:
        arr = np.asarray(ids)
    except (OverflowError, ValueError):
        arr = None
    if arr is None or arr.dtype.kind not in "iu":
        return _first_non_int(ids) or "a token id does not fit in 64 bits"
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        return f"token id {lo} < 0"
    if hi >= vocab_size:
        return f"token id {hi} >= vocab size {vocab_size}"
    return None


def _check_range(path: str, start: int, end: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Lines starting in [start, end): (offsets of the non-blank ones, their numbers of tokens, number of lines)."""
    offsets: list[int] = []
    lengths: list[int] = []
    lines = 0
    with open(path, "rb") as f:
        f.seek(start)
        if start > 0:  # the line in progress at `start` belongs to the previous range
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()
        pos = f.tell()
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            lines += 1
            if raw.strip():
                try:
                    obj = _loads(raw)
                except ValueError as e:
                    utf8 = isinstance(e, UnicodeDecodeError) or "UTF-8" in str(e)
                    msg = "not valid UTF-8" if utf8 else f"not valid JSON ({e})"
                    raise LineProblem(pos, msg) from None
                problem = check_ids(obj, vocab_size, raw)
                if problem:
                    raise LineProblem(pos, problem)
                offsets.append(pos)
                lengths.append(len(obj["input_ids"]))
            pos += len(raw)
    return np.asarray(offsets, dtype=np.uint64), np.asarray(lengths, dtype=np.uint64), lines


def line_number_at(path: str, offset: int) -> int:
    """1-based number of the line that starts at byte ``offset`` (for error messages)."""
    count, done = 0, 0
    with open(path, "rb") as f:
        while done < offset:
            chunk = f.read(min(1 << 20, offset - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
    return count + 1


def index_packed_jsonl(path: str, vocab_size: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Check every line of ``path`` and return the byte offsets of its non-blank lines and their numbers of tokens,
    both (N,) uint64.

    Raises ``lrc.errors.DataError`` naming ``path:line`` at the first bad line (and for an empty file).
    """
    from lrc.errors import DataError

    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"{path}: empty file")
    starts = list(range(0, size, _RANGE_BYTES))
    ranges = [(s, min(s + _RANGE_BYTES, size)) for s in starts]
    workers = min(_MAX_WORKERS, os.cpu_count() or 1, len(ranges)) if size >= PARALLEL_FROM_BYTES else 1
    bar = None
    if progress and size >= PARALLEL_FROM_BYTES:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"checking {os.path.basename(path)}", file=sys.stderr)
    try:
        if workers == 1:
            parts = []
            for a, b in ranges:
                parts.append(_check_range(path, a, b, vocab_size))
                if bar is not None:
                    bar.update(b - a)
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_check_range, path, a, b, vocab_size) for a, b in ranges]
                parts = []
                for (a, b), fut in zip(ranges, futures):
                    parts.append(fut.result())
                    if bar is not None:
                        bar.update(b - a)
    except LineProblem as e:
        offset, msg = e.args
        raise DataError(f"{path}:{line_number_at(path, offset)}: {msg}") from None
    finally:
        if bar is not None:
            bar.close()
    offsets = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.uint64)
    if offsets.size == 0:
        raise DataError(f"{path}: no data (only blank lines)")
    return offsets, np.concatenate([p[1] for p in parts])


def cached_index(path: str, vocab_size: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``index_packed_jsonl``, cached by the file's identity and ``vocab_size`` (see the module docstring)."""
    from lrc.file_cache import entry_path, file_key

    entry = entry_path("packed-jsonl-index", file_key(path, vocab_size, "v2"), ".npy")
    try:
        both = np.load(entry, allow_pickle=False)
        if both.ndim == 2 and both.shape[0] == 2:
            return both[0], both[1]
    except (OSError, ValueError):
        pass
    offsets, lengths = index_packed_jsonl(path, vocab_size, progress)
    try:
        from lrc.files import atomic_write

        both = np.stack([offsets, lengths])
        atomic_write(entry, lambda p: np.save(open(p, "wb"), both, allow_pickle=False))
    except OSError:
        pass
    return offsets, lengths
