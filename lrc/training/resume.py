"""The resume contract: which checkpoint a run continues from, and what the new run must match.

A run's *record* (``run_record``: its flags, world size, data, teacher and method) is written to
``OUT/run_config.json`` when it starts and into every checkpoint it writes. ``plan_resume`` decides,
before the teacher loads, what the new run does:

- ``--resume auto``: the newest ``checkpoint-N`` of the run's *live line* whose manifest verifies (newer
  ones are skipped and named, with the reason). The live line is the chain of runs recorded in
  ``OUT/run_config.json`` (``lineage``): after a rollback (``--resume OUT/checkpoint-2`` while a
  ``checkpoint-4`` exists) the abandoned continuation's checkpoints are not on it. A checkpoint whose
  weights produced a non-finite loss (``nonfinite`` in the record) is skipped too. None, but checkpoints
  or final files of a run: refused (a run is never started over). Nothing there, or only the record of
  a start that ended before its first checkpoint: a fresh start.
- ``--resume PATH``: that checkpoint, which must verify.
- No ``--resume``: a fresh start, refused over checkpoints or final files of a run unless
  ``--overwrite_output_dir`` (which, with ``--resume auto``, applies only when there is nothing to
  resume: the demo's case).

Then the checkpoint's record is compared with the new run:

- the teacher (config hash and weights fingerprint) and the method (``--model_cls``, the LRC config)
  must match, always;
- the flags of ``CHECKED_FLAGS`` (schedule, optimisation, data, batch geometry, seed; declared beside the
  fields in ``lrc.training.config``) must match, or be named in
  ``--allow_changed``; an allowed change is applied and logged (``ResumePlan.changes``);
- anything else (``--max_steps``, saving, logging, evaluation) may change.

A run already at ``--max_steps`` trains nothing (``finished_at``); one whose training finished but
whose final files were not all written gets them from its last checkpoint (``finalize_from``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrc.checkpoint import CheckpointError, TeacherRef, check_resume_compatible
from lrc.errors import RunDirError
from lrc.files import read_manifest
from lrc.training.config import CHECKED_FLAGS, FLAG_GROUP, TrainConfig
from lrc.training.record import (
    new_lineage,
    off_line_reason,
    on_line,
    read_record,
    read_record_or_none,
    same_dataset,
    suspect_reason,
)
from lrc.training.run_dir import (
    RUN_RECORD_NAME,
    TRAINER_STATE_NAME,
    finished_step,
    newest_complete_checkpoint,
    previous_run_files,
    verify_checkpoint,
)

BATCH_GEOMETRY = tuple(k for k, why in CHECKED_FLAGS.items() if why == "batch geometry")
"""Checked flags that move the data position when changed (``data_position``)."""
SCHEDULE_FLAGS = tuple(k for k, why in CHECKED_FLAGS.items() if why == "schedule")
"""Checked flags the restored optimizer and scheduler carry (replaced on an allowed change)."""


@dataclass(frozen=True)
class FlagChange:
    name: str
    stored: Any
    now: Any

    def describe(self) -> str:
        return f"--{self.name} {_show(self.now)} (checkpoint: {_show(self.stored)})"


def _show(v: Any) -> str:
    if isinstance(v, dict) and "paths" in v:  # a dataset identity
        return f"{','.join(v['paths'])} [{v['bytes']:,} bytes, content {v.get('sample_sha256', '?')[:12]}]"
    return repr(v)


# ---------------------------------------------------------------------------------------------- the live line


def _value(record: dict[str, Any], cfg: TrainConfig, name: str) -> Any:
    """A checked flag's value in a run: the world size and the data's identity from its record, the others from its
    configuration."""
    if name == "world_size":
        return record.get("world_size")
    if name == "dataset_name":
        return record.get("dataset")
    return getattr(getattr(cfg, FLAG_GROUP[name]), name)


def compare_records(stored: dict[str, Any], now: dict[str, Any]) -> list[FlagChange]:
    """The ``CHECKED_FLAGS`` whose values differ (``num_epochs`` only when either run counts epochs)."""
    a, b = TrainConfig.from_record(stored), TrainConfig.from_record(now)
    epochs_matter = -1 in (a.optim.max_steps, b.optim.max_steps)
    values = {n: (_value(stored, a, n), _value(now, b, n)) for n in CHECKED_FLAGS}
    return [FlagChange(n, old, new) for n, (old, new) in values.items()
            if (n != "num_epochs" or epochs_matter) and not same_dataset(old, new)]


def method_mismatch(stored: dict[str, Any], now: dict[str, Any], where: str) -> None:
    """Refuse another teacher or another method: never allowed (``--load_model_weight_path`` warm-starts)."""
    if stored.get("kind", "train") != "train":
        raise CheckpointError(f"cannot resume from {where}: it was written by lrc {stored['kind']}, not lrc train")
    st, nt = TeacherRef(**stored["teacher"]), TeacherRef(**now["teacher"])
    why = st.mismatch(nt)
    if why:
        raise CheckpointError(f"cannot resume from {where}: it was trained against teacher {st.describe()}, but "
                              f"--raw_model_name is {nt.describe()}: {why}")
    from lrc.training.flags import canonical_method_name

    if canonical_method_name(str(stored.get("model_cls"))) != canonical_method_name(str(now.get("model_cls"))):
        raise CheckpointError(f"cannot resume from {where}: it was trained with --model_cls {stored.get('model_cls')}, "
                              f"this run has --model_cls {now.get('model_cls')}")
    check_resume_compatible(stored.get("lrc", {}), now.get("lrc", {}), Path(where))


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
    final_outputs_abandoned: int | None = None
    """The root holds final outputs of step N > the checkpoint resumed from (a rollback): they no longer belong to
    the live line, so their manifest is removed when the run starts (the files stay until it finishes)."""

    @property
    def changed(self) -> set[str]:
        return {c.name for c in self.changes}

    def messages(self) -> list[str]:
        out = [f"--resume: skipped {p} ({why})" for p, why in self.skipped]
        for c in self.changes:
            out.append(f"--resume: applying the changed {c.describe()} (--allow_changed)")
        return out


@dataclass(frozen=True)
class ResumeRules:
    """What ``plan_resume`` reads from, and compares between, the records of one kind of run."""

    max_steps: Callable[[dict[str, Any]], int]
    """A record -> the optimizer steps its run trains to (-1: counted in epochs)."""
    refuse_mismatch: Callable[[dict[str, Any], dict[str, Any], str], None]
    """(stored, now, checkpoint path): raise a one-line ``CheckpointError`` when never resumable (another teacher)."""
    changes: Callable[[dict[str, Any], dict[str, Any]], list[FlagChange]]
    """(stored, now) -> the checked flags that differ (refused unless ``--allow_changed`` names them)."""
    can_allow: bool = True
    """The command has ``--allow_changed`` (otherwise a resume is strict)."""


TRAIN_RULES = ResumeRules(lambda r: TrainConfig.from_record(r).optim.max_steps, method_mismatch, compare_records)
"""``lrc train``'s rules (``lrc onpolicy`` has its own: ``lrc.onpolicy.record``)."""


def plan_resume(output_dir: str | os.PathLike, resume: str | None, overwrite: bool, record: dict[str, Any],
                allow_changed: set[str], rules: ResumeRules = TRAIN_RULES) -> ResumePlan:
    """Decide what the run does in ``output_dir`` (see the module docstring). Raises a one-line error.

    Sets ``record["lineage"]``: this run's live line (``new_lineage``)."""
    out = Path(output_dir)
    plan = ResumePlan(record=record)
    previous = [n for n in previous_run_files(out) if n != RUN_RECORD_NAME]  # a record alone: nothing of value
    if resume is None:
        if previous and not overwrite:
            raise RunDirError(f"--output_dir {str(out)!r} already holds a run ({', '.join(previous[:4])}"
                              f"{' ...' if len(previous) > 4 else ''}): pass --resume auto to continue it, or "
                              f"--overwrite_output_dir to delete it and start over")
        return plan  # a fresh start (the caller deletes the previous run with --overwrite_output_dir)
    max_steps = rules.max_steps(record)
    done = finished_step(out)  # hashes the final files once: used below too
    if resume == "auto":
        finished = done is not None and max_steps > 0 and done >= max_steps
        # a finished run continues only from a newer checkpoint (an extension): the older ones are not verified
        ckpt, plan.skipped = _newest_on_line(out, above=done if finished else None)
        if finished and ckpt is None:
            plan.finished_at = done
            return plan
        if ckpt is None:
            if previous and not overwrite:
                reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in plan.skipped) or "no checkpoint-N"
                raise RunDirError(f"--resume auto: {str(out)!r} holds files of a run ({', '.join(previous[:4])}) but no "
                                  f"complete checkpoint on its live line ({reasons}); refusing to start over it: pass "
                                  f"--overwrite_output_dir to delete them, or --resume PATH")
            return plan  # nothing of value there: the same command starts and later resumes a run
    else:
        ckpt = Path(resume)
        problem = "not a directory" if not ckpt.is_dir() else verify_checkpoint(ckpt)
        if problem:
            raise CheckpointError(f"--resume {resume!r} is not a complete checkpoint: {problem}")
    where = str(ckpt)
    stored = read_record(ckpt)
    rules.refuse_mismatch(stored, record, where)
    changes = rules.changes(stored, record)
    refused = [c for c in changes if c.name not in allow_changed]
    if refused:
        names = ",".join(c.name for c in refused)
        raise CheckpointError(f"cannot resume from {where}: flags differ from the run that wrote it: "
                              f"{'; '.join(c.describe() for c in refused)}. Use the checkpoint's values"
                              + (f", or pass --allow_changed {names} to apply them" if rules.can_allow else
                                 " (a resume continues only with the settings it was trained with)"))
    plan.checkpoint, plan.stored, plan.changes = where, stored, changes
    plan.step = read_manifest(ckpt)["step"]
    record["resumed_from"] = where
    record["changed_on_resume"] = [{"flag": c.name, "from": c.stored, "to": c.now} for c in changes]
    record["lineage"] = new_lineage(stored, plan.step, record["run_id"])
    if plan.step >= _target_steps(ckpt, max_steps):
        if done is not None and done >= plan.step:
            plan.finished_at = done
        else:
            plan.finalize_from = where
    elif done is not None and done > plan.step:
        plan.final_outputs_abandoned = done
    return plan


def _newest_on_line(out: Path, above: int | None = None) -> tuple[Path | None, list[tuple[str, str]]]:
    """The newest checkpoint of ``out`` (of a step ``> above``) that is on the live line of the run recorded at its
    root, is not suspect (``suspect_reason``) and verifies; and the newer ones skipped, with the reason. Without a
    lineage in the root record (a run of an older version, or none): the newest that verifies."""
    root = read_record_or_none(out)
    lineage = (root or {}).get("lineage")

    def reject(step: int, p: Path) -> str | None:
        if lineage is not None:
            rec = read_record_or_none(p)
            if not on_line(rec, step, lineage):
                return off_line_reason(rec, lineage)
        return suspect_reason(root, step)

    ckpt, skipped = newest_complete_checkpoint(out, reject=reject, above=above)
    return ckpt, [(str(p), why) for p, why in skipped]


def _target_steps(ckpt: Path, max_steps: int) -> int:
    """The optimizer steps this run trains to: ``max_steps`` (--max_steps), or the epoch-based total the checkpoint's
    run computed (``trainer_state.json``'s max_steps) when it is -1."""
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
    o = TrainConfig.from_record(stored).optim
    bs_o, gas_o, w_o = o.batch_size, o.gradient_accumulation_steps, stored["world_size"]
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
