"""The start of a run in its ``--output_dir``: the checks that need no directory, then claiming it (lock, resume
plan, the record of the live line), undone when the start fails before training begins.

Order (``open_run_dir``, main process only):

1. nothing written yet: the teacher's config, the method against it (``LRCConfig.validate``), the student's
   HF config as stock transformers would load it (``lrc.families.student_config``), the output directory is
   not the teacher's and holds no model that no run wrote (``lrc.training.run_dir.foreign_model_files``);
2. ``--output_dir`` created if needed, proved writable and locked (``lrc.training.run_dir.RunLock``);
3. the resume plan (``lrc.training.resume.plan_resume``) and what it implies: a previous run deleted
   (``--overwrite_output_dir``), half-written checkpoints cleared, final outputs of an abandoned line
   unmarked;
4. the run's record (its live line) written at the root, so that a requeue after a kill at any later
   moment follows this start's line.

``RunStart.undo`` (a failure or a signal before training begins: a data error, a refused flag, SIGTERM
during the teacher load) puts back what the start changed: the root record as it was, the lock file and,
when the start created ``--output_dir``, the directory itself. After a kill -9, which nothing can undo,
the directory holds at most the lock file and the record: ``--resume auto`` starts afresh over that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrc.console import say, warn
from lrc.errors import RunDirError
from lrc.files import MANIFEST_NAME, fsync_dir, write_bytes_atomic, write_json_atomic
from lrc.training.lock import RunLock
from lrc.training.run_dir import (
    RUN_RECORD_NAME,
    STAGING_DIR,
    check_output_dir,
    clear_previous_run,
    clear_staging,
    foreign_model_files,
)

if TYPE_CHECKING:
    from lrc.training.config import TrainConfig
    from lrc.training.resume import ResumePlan, ResumeRules


@dataclass
class RunStart:
    """What this start changed in ``out`` before training began (``undo`` puts it back)."""

    out: Path
    created_dir: bool = False
    """The start created ``out``."""
    lock: RunLock | None = None
    previous_record: bytes | None = None
    """The root record before this start replaced it (None: there was none)."""
    wrote_record: bool = False
    training: bool = False
    """Training began: from here on a failure leaves what it wrote (checkpoints are the run's)."""

    def write_record(self, record: dict[str, Any]) -> None:
        """Write the run's record at the root (the first time: remember the one it replaces)."""
        path = self.out / RUN_RECORD_NAME
        if not self.wrote_record:
            self.previous_record = path.read_bytes() if path.is_file() else None
            self.wrote_record = True
        write_json_atomic(path, record)

    def undo(self) -> None:
        """Put ``out`` back as the start found it (see the module docstring); best effort, never raises."""
        path = self.out / RUN_RECORD_NAME
        if self.wrote_record:
            with contextlib.suppress(OSError):
                if self.previous_record is None:
                    path.unlink(missing_ok=True)
                else:
                    write_bytes_atomic(path, self.previous_record)
        if self.lock is not None:
            self.lock.release(remove=True)
        if self.created_dir:
            for d in (self.out / STAGING_DIR, self.out):  # only if empty: anything else there is not this start's
                with contextlib.suppress(OSError):
                    d.rmdir()
            fsync_dir(self.out.parent)

    @contextlib.contextmanager
    def undone_on_failure(self, main: bool):
        """Run the block; if it raises (or a signal interrupts it) before ``training`` is set, ``undo`` first."""
        try:
            yield self
        except BaseException:
            if main and not self.training:
                self.undo()
            raise


def teacher_dir(teacher_path: str) -> Path | None:
    """The local directory a teacher is read from (a .gguf file's folder), or None for a hub id."""
    p = Path(teacher_path)
    if not p.exists():
        return None
    return (p.parent if p.is_file() else p).resolve()


def check_output_dir_is_free(out: Path, models: dict[str, tuple[str, str]]) -> None:
    """Refuse an ``--output_dir`` that is the directory of one of the run's input models or holds a model that no run
    wrote (one line). ``models``: role -> (its flag, its path), e.g. ``{"teacher": ("raw_model_name", path)}``."""
    for role, (flag, path) in models.items():
        d = teacher_dir(path)
        if d is not None and out.resolve() == d:
            raise RunDirError(f"--output_dir {str(out)!r} is the {role}'s directory (--{flag} {path}): a run never "
                              f"writes there; choose another --output_dir")
    foreign = foreign_model_files(out)
    if foreign:
        raise RunDirError(f"--output_dir {str(out)!r} holds a model that no lrc run wrote ({', '.join(foreign[:4])}"
                          f"{' ...' if len(foreign) > 4 else ''}); a run never writes or deletes there "
                          f"(--overwrite_output_dir included): choose another --output_dir")


def open_run_dir(cfg: TrainConfig, world_size: int, bf16: bool, teacher_path: str, stack: contextlib.ExitStack,
                 start: RunStart):
    """Main process: check, claim and plan ``--output_dir`` (module docstring); returns the ``ResumePlan`` and the
    teacher's config (checked here; a .gguf teacher's takes seconds to read, so it is read once and passed on).
    ``bf16``: whether the run computes in bf16, as resolved (recorded)."""
    from lrc.checkpoint import TeacherRef
    from lrc.families import student_config
    from lrc.teacher import load_teacher_config, teacher_fingerprint, weights_fingerprint
    from lrc.training.record import run_record

    out = start.out
    tcfg = load_teacher_config(teacher_path)
    cfg.method.validate(tcfg)
    student_config(tcfg, cfg.method)  # a width stock transformers would refuse to load: refused now, not later
    check_output_dir_is_free(out, {"teacher": ("raw_model_name", teacher_path)})

    def record() -> dict:
        ref = TeacherRef(teacher_path, teacher_fingerprint(tcfg), tcfg.model_type, weights_fingerprint(teacher_path))
        return run_record(cfg, world_size, ref, bf16)

    c = cfg.ckpt
    return claim_run_dir(start, stack, record, c.resume, c.overwrite_output_dir, c.allowed_changes()), tcfg


def claim_run_dir(start: RunStart, stack: contextlib.ExitStack, make_record: Callable[[], dict[str, Any]],
                  resume: str | None, overwrite: bool, allowed: set[str], rules: ResumeRules | None = None
                  ) -> ResumePlan:
    """Main process, any kind of run: steps 2-4 of the module docstring in ``start.out``. ``make_record()``: the run's
    record (called once the directory is locked); ``rules``: what a resume compares (default: ``lrc train``'s)."""
    from lrc.training.resume import TRAIN_RULES, plan_resume

    out = start.out
    with start.undone_on_failure(main=True):
        start.created_dir = not out.exists()
        free = check_output_dir(out)
        start.lock = stack.enter_context(RunLock(out))
        if start.lock.stale_holder is not None:
            warn(f"{start.lock.path}: the run that held it ({start.lock.stale_holder.describe()}) ended without "
                 f"releasing it (killed?); this run takes it over")
        say(f"output dir {out}: locked by this run, {free / 2**30:.1f} GiB free")
        record = make_record()
        _refuse_other_kind(out, record)
        plan = plan_resume(out, resume, overwrite, record, allowed, rules or TRAIN_RULES)
        if plan.finished_at is not None or plan.finalize_from is not None:
            return plan
        if overwrite and plan.checkpoint is None:
            clear_previous_run(out)
        clear_staging(out)  # half-written checkpoints of a killed run
        if plan.final_outputs_abandoned is not None:
            (out / MANIFEST_NAME).unlink(missing_ok=True)
            say(f"--resume: the final outputs at {out} (step {plan.final_outputs_abandoned}) are not on the line "
                f"resumed from step {plan.step}; they stay until this run writes its own, but no longer count as "
                f"finished")
        start.write_record(plan.record)
        return plan


def _refuse_other_kind(out: Path, record: dict[str, Any]) -> None:
    """An ``lrc train`` run and an ``lrc onpolicy`` run never share a directory: neither resumes nor deletes the other
    (``--overwrite_output_dir`` included)."""
    from lrc.training.record import read_record_or_none

    there = read_record_or_none(out)
    kind, ours = (there or {}).get("kind", "train"), record.get("kind", "train")
    if there is not None and kind != ours:
        raise RunDirError(f"--output_dir {str(out)!r} holds an lrc {kind} run; this is lrc {ours}, which never writes "
                          f"or deletes there (--overwrite_output_dir included): choose another --output_dir")
