"""The resume contract: which checkpoint a run continues from, and what the new run must match.

A run's *record* (``run_record``: its flags, world size, data, teacher and method) is written to
``OUT/run_config.json`` when it starts and into every checkpoint it writes. ``plan_resume`` decides,
before the teacher loads, what the new run does:

- ``--resume auto``: the newest ``checkpoint-N`` whose manifest verifies (newer ones are skipped and
  named, with the reason). None, but files of a run: refused (a run is never started over). Nothing
  there: a fresh start.
- ``--resume PATH``: that checkpoint, which must verify.
- No ``--resume``: a fresh start, refused over files of a run unless ``--overwrite_output_dir``
  (which, with ``--resume auto``, applies only when there is nothing to resume: the demo's case).

Then the checkpoint's record is compared with the new run:

- the teacher (config hash and weights fingerprint) and the method (``--model_cls``, the LRC config)
  must match, always;
- the flags of ``CHECKED_FLAGS`` (optimisation, data, batch geometry, seed) must match, or be named in
  ``--allow_changed``; an allowed change is applied and logged (``ResumePlan.changes``);
- anything else (``--max_steps``, saving, logging, evaluation) may change.

A run already at ``--max_steps`` trains nothing (``finished_at``); one whose training finished but
whose final files were not all written gets them from its last checkpoint (``finalize_from``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, TeacherRef
from .run_dir import (RUN_RECORD_NAME, TRAINER_STATE_NAME, RunDirError, finished_step, newest_complete_checkpoint,
                      previous_run_files, read_manifest, verify_checkpoint)

RECORD_FORMAT = 1

CHECKED_FLAGS: dict[str, str] = {
    "learning_rate": "optimisation",
    "lr_scheduler": "optimisation",
    "warmup_ratio": "optimisation",
    "warmup_steps": "optimisation",
    "adam_beta2": "optimisation",
    "max_grad_norm": "optimisation",
    "bf16": "optimisation",
    "batch_size": "batch geometry",
    "gradient_accumulation_steps": "batch geometry",
    "world_size": "batch geometry",
    "dataset_name": "data",
    "data_max_len": "data",
    "text_field": "data",
    "seed": "data order and init",
    "num_epochs": "length (when --max_steps is -1)",
}
"""Flags a resumed run must keep, unless named in ``--allow_changed`` (then applied and logged)."""
BATCH_GEOMETRY = ("batch_size", "gradient_accumulation_steps", "world_size")
SCHEDULE_FLAGS = ("learning_rate", "lr_scheduler", "warmup_ratio", "warmup_steps", "adam_beta2")


@dataclass(frozen=True)
class FlagChange:
    name: str
    stored: Any
    now: Any

    def describe(self) -> str:
        return f"--{self.name} {_show(self.now)} (checkpoint: {_show(self.stored)})"


def _show(v: Any) -> str:
    if isinstance(v, dict) and "paths" in v:  # a dataset identity
        return f"{','.join(v['paths'])} [{v['bytes']:,} bytes]"
    return repr(v)


def dataset_identity(spec: str) -> dict[str, Any]:
    """What a resume compares for ``--dataset_name``: the real paths and their total size in bytes."""
    parts = [spec] if os.path.exists(spec) or "," not in spec else [p.strip() for p in spec.split(",") if p.strip()]
    paths, total = [], 0
    for p in parts:
        real = os.path.realpath(p)
        paths.append(real)
        if os.path.isdir(real):
            total += sum(f.stat().st_size for f in Path(real).rglob("*") if f.is_file())
        elif os.path.isfile(real):
            total += os.path.getsize(real)
    return {"paths": paths, "bytes": total}


def run_record(cfg: dict[str, Any], world_size: int, teacher: TeacherRef, lrc: dict[str, Any]) -> dict[str, Any]:
    """The record of a run: its resolved flags, world size, data, teacher and method (JSON-ready)."""
    return {
        "lrc_run_record": RECORD_FORMAT,
        "flags": {k: v for k, v in cfg.items() if not k.startswith("_")},
        "given": cfg.get("_given", []),
        "model_cls": cfg["model_cls"],
        "lrc": lrc,
        "world_size": world_size,
        "dataset": dataset_identity(cfg["dataset_name"]),
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


def _value(record: dict[str, Any], name: str) -> Any:
    if name == "world_size":
        return record.get("world_size")
    if name == "dataset_name":
        return record.get("dataset")
    return record.get("flags", {}).get(name)


def compare_records(stored: dict[str, Any], now: dict[str, Any]) -> list[FlagChange]:
    """The ``CHECKED_FLAGS`` whose values differ (``num_epochs`` only when either run counts epochs)."""
    epochs_matter = -1 in (_value(stored, "max_steps"), _value(now, "max_steps"))
    return [FlagChange(n, _value(stored, n), _value(now, n)) for n in CHECKED_FLAGS
            if (n != "num_epochs" or epochs_matter) and _value(stored, n) != _value(now, n)]


def method_mismatch(stored: dict[str, Any], now: dict[str, Any], where: str) -> None:
    """Refuse another teacher or another method: never allowed (``--load_model_weight_path`` warm-starts)."""
    st, nt = TeacherRef(**stored["teacher"]), TeacherRef(**now["teacher"])
    why = st.mismatch(nt)
    if why:
        raise CheckpointError(f"cannot resume from {where}: it was trained against teacher {st.describe()}, but "
                              f"--raw_model_name is {nt.describe()}: {why}")
    if stored.get("model_cls") != now.get("model_cls"):
        raise CheckpointError(f"cannot resume from {where}: it was trained with --model_cls {stored.get('model_cls')}, "
                              f"this run has --model_cls {now.get('model_cls')}")
    check_resume_compatible(stored.get("lrc", {}), now.get("lrc", {}), Path(where))


# Fields of the LRC config that may differ between a checkpoint and the run resuming from it.
_RESUME_FREE_FIELDS = ("logits_chunk_tokens",)


def check_resume_compatible(stored: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse to resume a checkpoint under a different LRC configuration (names the differing fields)."""
    from .run_dir import CONFIG_NAME

    import dataclasses

    from .config import LRCConfig

    # A field added after the checkpoint was written has its default there (e.g. mlp_train = "lrc").
    defaults = {f.name: f.default for f in dataclasses.fields(LRCConfig) if f.default is not dataclasses.MISSING}
    stored = {**{k: v for k, v in defaults.items() if k in current}, **stored}
    diff = [f"{k}: checkpoint {stored.get(k)!r} vs now {current.get(k)!r}" for k in sorted(set(stored) | set(current))
            if k not in _RESUME_FREE_FIELDS and stored.get(k) != current.get(k)]
    if diff:
        raise CheckpointError(f"cannot resume from {str(where)!r} with a different LRC configuration ({'; '.join(diff)}); "
                              f"use the checkpoint's settings (see its {CONFIG_NAME}), or --load_model_weight_path "
                              f"for a warm start without optimizer state")


@dataclass
class ResumePlan:
    """What a run does in its output directory (decided by ``plan_resume`` on the main process)."""

    record: dict[str, Any]
    """This run's record (``resumed_from`` and ``changed_on_resume`` filled in)."""
    checkpoint: str | None = None
    """The checkpoint to resume from; None: a fresh start."""
    stored: dict[str, Any] | None = None
    """The record of the run that wrote ``checkpoint``."""
    step: int = 0
    """The checkpoint's optimizer step."""
    changes: list[FlagChange] = field(default_factory=list)
    """Differences from the checkpoint's run that ``--allow_changed`` allowed (applied, logged)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Newer checkpoints that did not verify, and why."""
    finished_at: int | None = None
    """The run is complete at this step (>= --max_steps): nothing to train."""
    finalize_from: str | None = None
    """Training had reached --max_steps but the final files were not all written: take them from here."""

    @property
    def changed(self) -> set[str]:
        return {c.name for c in self.changes}

    def messages(self) -> list[str]:
        out = [f"--resume: skipped {p} ({why})" for p, why in self.skipped]
        for c in self.changes:
            out.append(f"--resume: applying the changed {c.describe()} (--allow_changed)")
        return out


def plan_resume(output_dir: str | os.PathLike, resume: str | None, overwrite: bool, record: dict[str, Any],
                allow_changed: set[str]) -> ResumePlan:
    """Decide what the run does in ``output_dir`` (see the module docstring). Raises a one-line error."""
    out = Path(output_dir)
    plan = ResumePlan(record=record)
    previous = previous_run_files(out)
    if resume is None:
        if previous and not overwrite:
            raise RunDirError(f"--output_dir {str(out)!r} already holds a run ({', '.join(previous[:4])}"
                              f"{' ...' if len(previous) > 4 else ''}): pass --resume auto to continue it, or "
                              f"--overwrite_output_dir to delete it and start over")
        return plan  # a fresh start (the caller deletes the previous run with --overwrite_output_dir)
    max_steps = record["flags"]["max_steps"]
    done = finished_step(out)  # hashes the final files once: used below too
    if resume == "auto":
        ckpt, skipped = newest_complete_checkpoint(out)
        plan.skipped = [(str(p), why) for p, why in skipped]
        if done is not None and (ckpt is None or checkpoint_step_of(ckpt) <= done) and max_steps > 0 \
                and done >= max_steps:
            plan.finished_at = done
            return plan
        if ckpt is None:
            if previous and not overwrite:
                reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in plan.skipped) or "no checkpoint-N"
                raise RunDirError(f"--resume auto: {str(out)!r} holds files of a run ({', '.join(previous[:4])}) but no "
                                  f"complete checkpoint ({reasons}); refusing to start over it: pass "
                                  f"--overwrite_output_dir to delete them, or --resume PATH")
            return plan  # an empty directory: the same command starts and later resumes a run
    else:
        ckpt = Path(resume)
        problem = "not a directory" if not ckpt.is_dir() else verify_checkpoint(ckpt)
        if problem:
            raise CheckpointError(f"--resume {resume!r} is not a complete checkpoint: {problem}")
    where = str(ckpt)
    stored = read_record(ckpt)
    method_mismatch(stored, record, where)
    changes = compare_records(stored, record)
    refused = [c for c in changes if c.name not in allow_changed]
    if refused:
        names = ",".join(c.name for c in refused)
        raise CheckpointError(f"cannot resume from {where}: flags differ from the run that wrote it: "
                              f"{'; '.join(c.describe() for c in refused)}. Use the checkpoint's values, or pass "
                              f"--allow_changed {names} to apply them")
    plan.checkpoint, plan.stored, plan.changes = where, stored, changes
    plan.step = read_manifest(ckpt)["step"]
    record["resumed_from"] = where
    record["changed_on_resume"] = [{"flag": c.name, "from": c.stored, "to": c.now} for c in changes]
    if plan.step >= _target_steps(ckpt, record):
        if done is not None and done >= plan.step:
            plan.finished_at = done
        else:
            plan.finalize_from = where
    return plan


def checkpoint_step_of(path: str | os.PathLike) -> int:
    return read_manifest(path)["step"]


def _target_steps(ckpt: Path, record: dict[str, Any]) -> int:
    """The optimizer steps this run trains to: --max_steps, or the epoch-based total the checkpoint's run
    computed (``trainer_state.json``'s max_steps) when --max_steps is -1."""
    max_steps = record["flags"]["max_steps"]
    if max_steps > 0:
        return max_steps
    try:
        return int(json.loads((ckpt / TRAINER_STATE_NAME).read_text())["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.inf  # unknown: train


# ---------------------------------------------------------------------------------------------- data position
@dataclass(frozen=True)
class DataPosition:
    """Where a resumed run continues in its data, in HF Trainer's terms."""

    epochs_trained: int
    micro_batches_to_skip: int
    """Per process, in the current epoch (a whole number of optimizer steps)."""
    samples_seen_again: int
    """Samples of the current epoch the resumed run sees a second time (rounding to whole steps)."""


def _per_process_batches(n: int, batch: int, world: int) -> int:
    """Length of one process's DataLoader: ceil(ceil(n / batch) / world) (accelerate shards whole batches)."""
    return max(1, math.ceil(math.ceil(n / batch) / world))


def data_position(stored: dict[str, Any], step: int, batch_size: int, grad_accum: int, world_size: int,
                  n_sequences: int) -> DataPosition:
    """The data position of a checkpoint at ``step``, re-expressed for another batch geometry.

    HF counts the position in optimizer steps; with another batch size, accumulation or world size the
    same step is another place in the data. Here the position is the number of samples the
    checkpoint's run had consumed in its current epoch; the new run skips the largest whole number of
    its own optimizer steps that does not pass it.
    """
    f = stored["flags"]
    bs_o, gas_o, w_o = f["batch_size"], f["gradient_accumulation_steps"], stored["world_size"]
    n_o = stored.get("train_sequences") or n_sequences
    len_o = _per_process_batches(n_o, bs_o, w_o)
    steps_per_epoch_o = max(1, math.ceil(len_o / gas_o))
    epoch, in_epoch_steps = divmod(step, steps_per_epoch_o)
    samples = in_epoch_steps * gas_o * bs_o * w_o
    len_n = _per_process_batches(n_sequences, batch_size, world_size)
    per_step_n = batch_size * grad_accum * world_size
    steps_n = samples // per_step_n
    micro = steps_n * grad_accum
    if micro >= len_n:  # the checkpoint's epoch ended within the new run's last step
        return DataPosition(epoch + 1, 0, 0)
    return DataPosition(epoch, micro, samples - steps_n * per_step_n)
