"""A run's record (``OUT/run_config.json``, and a copy in every checkpoint): what the run is (its flags, world size,
data identity, teacher and method) and its live line (``lineage``: the runs whose checkpoints it continues), which
``--resume auto`` and rotation follow (``lrc.training.resume``, ``lrc.training.run_dir``)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from lrc.checkpoint import CheckpointError, TeacherRef, checkpoint_step, list_checkpoints
from lrc.training.config import TrainConfig
from lrc.training.run_dir import RUN_RECORD_NAME, verify_checkpoint

RECORD_FORMAT = 1


SAMPLE_BLOCK = 64 << 10


SAMPLE_BLOCKS = 64
"""``dataset_identity``'s content fingerprint reads this many blocks of ``SAMPLE_BLOCK`` bytes in all (at most)."""


def _data_files(real: str) -> list[Path]:
    if os.path.isdir(real):
        return sorted(f for f in Path(real).rglob("*") if f.is_file())
    return [Path(real)] if os.path.isfile(real) else []


def content_sample_sha256(files: list[Path]) -> str:
    """sha256 of every file's name and size and of ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BLOCK`` bytes spread evenly over
    the files' contents (a file within its share is read whole; with more files than blocks, one block from each of
    ``SAMPLE_BLOCKS`` evenly chosen files): at most 4 MiB read whatever the data's size, and it changes when a small
    file, or a sampled part of a large one, is rewritten in place at the same size."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
    step = max(1, len(files) / SAMPLE_BLOCKS)
    sampled = [files[int(i * step)] for i in range(min(len(files), SAMPLE_BLOCKS))]
    per_file = max(1, SAMPLE_BLOCKS // max(1, len(sampled)))
    for f in sampled:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            if size <= per_file * SAMPLE_BLOCK:
                h.update(fh.read())
                continue
            for i in range(per_file):
                fh.seek((size - SAMPLE_BLOCK) * i // max(1, per_file - 1))
                h.update(fh.read(SAMPLE_BLOCK))
    return h.hexdigest()[:16]


def dataset_identity(spec: str) -> dict[str, Any]:
    """What a resume compares for ``--dataset_name``: the real paths, their total size in bytes and a content
    fingerprint of sampled blocks (``content_sample_sha256``)."""
    parts = [spec] if os.path.exists(spec) or "," not in spec else [p.strip() for p in spec.split(",") if p.strip()]
    paths, files = [], []
    for p in parts:
        real = os.path.realpath(p)
        paths.append(real)
        files += _data_files(real)
    return {"paths": paths, "bytes": sum(f.stat().st_size for f in files), "sample_sha256": content_sample_sha256(files)}


def same_dataset(a: Any, b: Any) -> bool:
    """Dataset identities are equal; the content fingerprint counts only where both records have one (records
    written before it existed have none)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return a == b
    keys = {"paths", "bytes"} | ({"sample_sha256"} if "sample_sha256" in a and "sample_sha256" in b else set())
    return all(a.get(k) == b.get(k) for k in keys)


def run_record(cfg: TrainConfig, world_size: int, teacher: TeacherRef, bf16: bool) -> dict[str, Any]:
    """The record of a run: its flags (``TrainConfig.to_flags``, with ``bf16`` as resolved), world size, data,
    teacher and method (JSON-ready).

    ``run_id`` names this start of the run; ``lineage`` (set by ``plan_resume``) is its live line."""
    run_id = uuid.uuid4().hex[:16]
    return {
        "lrc_run_record": RECORD_FORMAT,
        "run_id": run_id,
        "lineage": new_lineage(None, 0, run_id),
        "flags": {**cfg.to_flags(), "bf16": bf16},
        "given": list(cfg.given),
        "model_cls": cfg.run.model_cls,
        "lrc": cfg.method.to_dict(),
        "world_size": world_size,
        "dataset": dataset_identity(cfg.run.dataset_name),
        "train_sequences": None,  # set once the data are loaded
        "teacher": teacher.to_dict(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "resumed_from": None,
        "changed_on_resume": [],
    }


def read_record(directory: str | os.PathLike) -> dict[str, Any]:
    p = Path(directory) / RUN_RECORD_NAME
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p}: cannot read the run record ({e})") from None
    if not isinstance(rec, dict) or rec.get("lrc_run_record") != RECORD_FORMAT:
        raise CheckpointError(f"{p}: not a run record of format {RECORD_FORMAT}")
    return rec


def read_record_or_none(directory: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return read_record(directory)
    except CheckpointError:
        return None


def new_lineage(stored: dict[str, Any] | None, step: int, run_id: str) -> list[dict[str, Any]]:
    """The live line of a run that starts fresh (``stored`` None) or resumes, at ``step``, from a checkpoint whose
    record is ``stored``: the runs whose checkpoints it continues, each with the last step taken from it
    (``until_step``; None for the run now training). Only runs that wrote a checkpoint on the way are in it (a
    start killed before its first checkpoint never is), so it stays short across any number of requeues."""
    if stored is None:
        return [{"run_id": run_id, "until_step": None}]
    line = [dict(e) for e in (stored.get("lineage") or [{"run_id": stored.get("run_id"), "until_step": None}])]
    line[-1]["until_step"] = step
    return line + [{"run_id": run_id, "until_step": None}]


def on_line(record: dict[str, Any] | None, step: int, lineage: list[dict[str, Any]]) -> bool:
    """Whether a checkpoint at ``step`` written by the run of ``record`` is on ``lineage``. A record without a
    ``run_id`` (written before lineages existed) is the run ``None``."""
    if record is None:
        return False
    rid = record.get("run_id")
    return any(e.get("run_id") == rid and (e.get("until_step") is None or step <= e["until_step"]) for e in lineage)


def off_line_reason(record: dict[str, Any] | None, lineage: list[dict[str, Any]]) -> str:
    """Why a checkpoint is not on the live line, for the skip message."""
    rid = record.get("run_id") if record else None
    left = [e["until_step"] for e in lineage if e.get("run_id") == rid and e.get("until_step") is not None]
    if left:
        return (f"an abandoned continuation: the live line of this run left the run that wrote it at step {left[0]} "
                f"(a later start resumed from checkpoint-{left[0]})")
    return "written by a run that is not on the live line of this run (a start that was later rolled back)"


def checkpoint_on_line(path: Path, lineage: list[dict[str, Any]] | None) -> bool:
    """``on_line`` for a checkpoint directory (every checkpoint is, when the live line is unknown)."""
    if lineage is None:
        return True
    step = checkpoint_step(path)
    return step is not None and on_line(read_record_or_none(path), step, lineage)


def live_checkpoints(output_dir: Path, lineage: list[dict[str, Any]] | None) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints on the run's live line that look complete (manifest and sizes, no hashing:
    cheap enough for every save), by step."""
    return [(s, p) for s, p in list_checkpoints(output_dir)
            if checkpoint_on_line(p, lineage) and verify_checkpoint(p, hashes=False) is None]


def suspect_reason(record: dict[str, Any] | None, step: int) -> str | None:
    """Why a checkpoint at ``step`` is skipped by ``--resume auto`` after the live run stopped on a non-finite
    loss (``record["nonfinite"]``, the root record), or None."""
    bad = (record or {}).get("nonfinite")
    if bad and step >= bad["step"] - 1:
        return (f"its weights produced the non-finite loss of step {bad['step']} (pass --resume PATH to resume from it "
                f"anyway)")
    return None
