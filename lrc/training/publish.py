"""How a training checkpoint reaches disk: every rank writes into ``OUT/.staging/checkpoint-N``; the main process adds
the run's record and the manifest and renames the directory into place; then rotation keeps the newest complete
checkpoints of the run's live line. A failed write removes the staged copy and is one line (``CheckpointWriteError``:
torch and safetensors report a full disk as RuntimeError / SafetensorError, not OSError). ``StagedCheckpoints``, a
mixin of every trainer here (``lrc train``'s and ``lrc onpolicy``'s), drives these steps from HF's ``_save_checkpoint``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lrc.errors import LRCError
from lrc.files import write_json_atomic
from lrc.training.record import live_checkpoints
from lrc.training.run_dir import RUN_RECORD_NAME, STAGING_DIR, publish_checkpoint, rotate_checkpoints


def begin_staging(run_dir: Path, name: str, main: bool) -> Path:
    """``OUT/.staging/NAME``, where every rank writes the checkpoint; the main process empties it of what a run killed
    while saving this step left."""
    staged = run_dir / STAGING_DIR / name
    if main:
        staged.parent.mkdir(parents=True, exist_ok=True)
        if staged.exists():
            shutil.rmtree(staged)
    return staged


def publish_staged(staged: Path, final: Path, step: int, record: dict[str, Any] | None) -> None:
    """Write the run's record into the staged checkpoint, then its manifest, and rename it into place."""
    if record is not None:
        write_json_atomic(staged / RUN_RECORD_NAME, record)
    publish_checkpoint(staged, final, step)


def after_publish(run_dir: Path, limit: int | None, just_written: Path, record: dict[str, Any] | None) -> None:
    """Rotation along the run's live line (``lrc.training.run_dir.rotate_checkpoints``), then the staging directory removed
    when empty."""
    line = [p for _, p in live_checkpoints(run_dir, (record or {}).get("lineage"))]
    rotate_checkpoints(run_dir, limit, line, just_written=just_written)
    try:
        (run_dir / STAGING_DIR).rmdir()  # only when empty
    except OSError:
        pass


class CheckpointWriteError(LRCError):
    """Writing a checkpoint failed (a full disk, a quota, an I/O error); nothing of it was kept."""


def write_failure(e: BaseException) -> bool:
    """Whether ``e`` is a writer's report of a failed write, which torch and safetensors raise as RuntimeError /
    SafetensorError instead of OSError (torch: ``[enforce fail at inline_container.cc] unexpected pos ...`` or
    ``PytorchStreamWriter failed writing file``; safetensors: ``I/O error: No space left on device``)."""
    text = str(e)
    return any(k in text for k in ("inline_container", "PytorchStreamWriter", "I/O error", "No space left",
                                   "Disk quota exceeded"))


def describe_write_failure(e: BaseException, name: str, directory: Path) -> str:
    """One line: what failed, the writer's words, the free space left and what to do."""
    try:
        free = shutil.disk_usage(directory).free
        space = f"{free / 2**20:,.1f} MiB free on the filesystem of {directory}"
    except OSError:
        free, space = None, f"the free space of {directory} is unknown"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    full = free is not None and free < 64 << 20
    return (f"writing {name} failed ({type(e).__name__}: {first}); {space}"
            + (": the disk is full. Free space (or point --output_dir elsewhere) and resume with --resume auto"
               if full else ". Check the filesystem, then resume with --resume auto")
            + "; nothing of this checkpoint was kept, the earlier checkpoints are intact")


class StagedCheckpoints:
    """Mixin for a ``transformers.Trainer`` (listed before it): HF's checkpoint (weights, optimizer, scheduler, RNG,
    trainer state) written by every rank into ``OUT/.staging/checkpoint-N``, then recorded, manifested and renamed
    into place by the main process, then rotated. ``run_record`` (set by the trainer) goes into every checkpoint;
    ``check_before_save`` runs before any file is touched (the non-finite guard)."""

    run_record: dict[str, Any] | None = None
    last_saved_step: int | None = None
    """The optimizer step of the last checkpoint this trainer published (None: none yet)."""
    _staging_root: str | None = None

    def check_before_save(self) -> None:
        """Raise to refuse the save (nothing is written)."""

    def _get_output_dir(self, trial) -> str:
        return self._staging_root if self._staging_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        self.check_before_save()
        run_dir = Path(super()._get_output_dir(trial))
        step = self.state.global_step
        name = f"checkpoint-{step}"
        staged = begin_staging(run_dir, name, self.args.should_save)
        self.accelerator.wait_for_everyone()
        self._staging_root = str(staged.parent)
        try:
            super()._save_checkpoint(model, trial)  # every rank writes into staging/checkpoint-N
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                publish_staged(staged, run_dir / name, step, self.run_record)
            self.accelerator.wait_for_everyone()
            if self.is_local_process_zero() and staged.exists():  # node-local disks: each node's own copy
                publish_staged(staged, run_dir / name, step, self.run_record)
        except BaseException as e:
            if self.is_local_process_zero():
                shutil.rmtree(staged, ignore_errors=True)  # nothing half-written stays behind
            if not isinstance(e, (LRCError, OSError)) and isinstance(e, Exception) and write_failure(e):
                raise CheckpointWriteError(describe_write_failure(e, name, run_dir)) from e
            raise
        finally:
            self._staging_root = None
        if self.args.should_save:
            after_publish(run_dir, self.args.save_total_limit, run_dir / name, self.run_record)
        self.last_saved_step = step

    def save_final_checkpoint(self) -> None:
        """Every process: checkpoint the last step if training ended without saving it (a callback stopped it
        between --save_steps), so that the final outputs are taken from it."""
        if self.last_saved_step != self.state.global_step:
            self._save_checkpoint(self.model_wrapped, trial=None)
