"""The run directory (``--output_dir``) and its rules: names, checkpoints, rotation, the lock, what a run left,
weights-only loading, the final outputs. The file mechanics under them (atomic writes, manifests) are
``lrc.files``.

Layout (docs/TRAINING.md, "What a run guarantees")::

    OUT/
      .lrc.lock               held (flock) by the run's main process for its whole life; names the holder
      run_config.json         the record of the run that last started here (lrc.training.resume.run_record)
      .staging/               checkpoints being written; whatever is left there is deleted at the next start
      checkpoint-N/           complete or absent (written in .staging/, renamed into place)
        run_config.json       the record of the run that wrote it: what a resume is compared with
        lrc_manifest.json     every other file below checkpoint-N/: path, size, sha256 (written last)
        lrc_weights.safetensors lrc_config.json | model.safetensors config.json baseline_config.json ...
        optimizer.pt scheduler.pt rng_state*.pth trainer_state.json   (HF's)
        global_stepN/ latest zero_to_fp32.py                          (DeepSpeed's)
      final files             the trained weights, trainer_state.json, run_config.json ...
      lrc_manifest.json       the final files, written last: the run finished at that step

Rules:
- a file is written under a temporary name, fsynced and renamed (``atomic_write``); a directory of
  files is written in a temporary directory and renamed (``publish_checkpoint``);
- a checkpoint or a finished run is complete exactly when its manifest verifies (``verify_manifest``):
  every listed file present with its size and sha256, nothing unlisted (a checkpoint);
- one run at a time: ``lrc.training.lock.RunLock`` (a kernel ``flock`` on ``.lrc.lock``; a holder that died is
  reported and replaced).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transformers.utils import CONFIG_NAME as HF_CONFIG_NAME
from transformers.utils import SAFE_WEIGHTS_NAME

from lrc.checkpoint import CONFIG_NAME, WEIGHTS_NAME, checkpoint_step, list_checkpoints
from lrc.errors import LRCError, RunDirError
from lrc.files import (
    MANIFEST_NAME,
    atomic_write,
    discard,
    fsync_dir,
    link_or_copy,
    publish_dir,
    read_manifest,
    verify_manifest,
    write_manifest,
)

# ---------------------------------------------------------------------------------------------- file names
MODEL_WEIGHTS_NAME = SAFE_WEIGHTS_NAME
"""A baseline's (standard HF) weights, ``model.safetensors``."""
MODEL_CONFIG_NAME = HF_CONFIG_NAME
# HF Trainer's own files. Equal to transformers.trainer's constants (asserted in tests/test_run_dir.py);
# not imported from there because that module takes seconds to import.
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
RUN_RECORD_NAME = "run_config.json"
"""The run's record (flags, world size, data, teacher): at the root and inside every checkpoint."""
LOCK_NAME = ".lrc.lock"
STAGING_DIR = ".staging"
"""Sub-directory of ``OUT`` where checkpoints are written before being renamed into place."""


# ---------------------------------------------------------------------------------------------- checkpoints
def verify_checkpoint(path: str | os.PathLike, only: Iterable[str] | None = None, hashes: bool = True) -> str | None:
    """None if ``path`` is a complete checkpoint (its manifest verifies and names its step), else why not.
    ``only`` and ``hashes``: as ``verify_manifest`` (``hashes=False``: what a decision at every save can afford)."""
    problem = verify_manifest(path, only=only, hashes=hashes)
    if problem is None:
        step = read_manifest(path)["step"]
        if checkpoint_step(path) not in (None, step):
            problem = f"its manifest is for step {step}"
    return problem


def newest_complete_checkpoint(output_dir: str | os.PathLike, reject: Callable[[int, Path], str | None] | None = None,
                               above: int | None = None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest ``checkpoint-N`` (of a step ``> above``) that ``reject(step, path)`` lets through (its reason, or
    None) and whose manifest verifies; and the newer ones skipped, with the reason."""
    skipped: list[tuple[Path, str]] = []
    for step, p in reversed(list_checkpoints(output_dir)):
        if above is not None and step <= above:
            break
        problem = (reject(step, p) if reject else None) or verify_checkpoint(p)
        if problem is None:
            return p, skipped
        skipped.append((p, problem))
    return None, skipped


def finished_step(output_dir: str | os.PathLike) -> int | None:
    """The step a run finished at, if the final files at the root verify against the root manifest."""
    root = Path(output_dir)
    if verify_manifest(root) is not None:
        return None
    m = read_manifest(root)
    return m["step"] if m["kind"] == "final" else None


def publish_checkpoint(staged: Path, final: Path, step: int) -> None:
    """Write the manifest of a finished staged checkpoint, then move it into place with one rename
    (replacing one of the same step: a previous run got this far, then was resumed from an earlier one)."""
    write_manifest(staged, step)
    publish_dir(staged, final)


def rotate_checkpoints(output_dir: Path, limit: int | None, line: list[Path], just_written: Path | None = None
                       ) -> list[Path]:
    """Keep the ``limit`` newest of ``line`` (the run's live line: its complete checkpoints, by step,
    ``lrc.training.record.live_checkpoints``) and delete the older ones (atomically, ``discard``). What is not in
    ``line`` is never deleted: a checkpoint that is not complete (kept for a human to look at; a resume skips it) and
    one of another line (an abandoned continuation: replaced when the live line writes the same step); nor is
    ``just_written``. Returns what was deleted."""
    if not limit or limit <= 0:
        return []
    deleted = [p for p in line[:-limit] if p != just_written]
    for p in deleted:
        discard(p, output_dir / STAGING_DIR)
    return deleted


# ---------------------------------------------------------------------------------------------- the directory
def check_output_dir(output_dir: str | os.PathLike) -> int:
    """Create ``output_dir`` if needed and prove it writable (a probe file); return its free bytes.

    Raises RunDirError (one line) for a path that is a file, cannot be created, or cannot be written.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--output_dir {str(out)!r} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=out)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise RunDirError(f"--output_dir {str(out)!r} is not writable: {e.strerror or e}") from None
    return shutil.disk_usage(out).free


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt")
"""Files that hold a model's weights (a teacher's, a converted student's, any HF checkpoint's)."""


def foreign_model_files(output_dir: str | os.PathLike) -> list[str]:
    """Model files (``config.json``, weights) in ``output_dir`` that no run of this project wrote there: the
    directory has no run record and no run manifest (a teacher's or a converted student's directory, say).
    ``--overwrite_output_dir`` never deletes these."""
    out = Path(output_dir)
    if not out.is_dir() or (out / RUN_RECORD_NAME).is_file() or (out / MANIFEST_NAME).is_file():
        return []
    ours = {WEIGHTS_NAME, CONFIG_NAME}
    return sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in ours
                  and (p.name == MODEL_CONFIG_NAME or p.name.endswith(MODEL_FILE_SUFFIXES)))


def previous_run_files(output_dir: str | os.PathLike) -> list[str]:
    """Names in ``output_dir`` that a run leaves behind (checkpoints, record, final files, manifest)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    names = {RUN_RECORD_NAME, MANIFEST_NAME, WEIGHTS_NAME, CONFIG_NAME, TRAINER_STATE_NAME, MODEL_WEIGHTS_NAME}
    found = [p.name for _, p in list_checkpoints(out)]
    found += sorted(n for n in names if (out / n).exists())
    return found


def clear_previous_run(output_dir: str | os.PathLike) -> None:
    """Delete what a previous run left (``--overwrite_output_dir``): checkpoints, final files, record.

    The root manifest goes first, so an interrupted clear never leaves a run that looks finished.
    """
    out = Path(output_dir)
    for name in [MANIFEST_NAME] + previous_run_files(out):
        p = out / name
        if p.is_dir():
            discard(p, out / STAGING_DIR)
        elif p.exists():
            p.unlink()
    clear_staging(out)


def clear_staging(output_dir: str | os.PathLike) -> None:
    """Delete half-written checkpoints of a killed run."""
    shutil.rmtree(Path(output_dir) / STAGING_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- loading
WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def deepspeed_state_globals() -> list:
    """The few classes DeepSpeed pickles into its checkpoint states (data only: a loss-scaler record and
    enums), allowed by the weights-only unpickler. Empty when DeepSpeed is not in use."""
    if "deepspeed" not in sys.modules:  # not in use (accelerate imports it when DeepSpeed is enabled)
        return []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def unpickler_refusal(e: BaseException) -> str:
    """The reason line of torch's weights-only refusal, e.g. ``Trying to load unsupported GLOBAL posix.system ...``."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL " in ln or ln.startswith(("Unsupported", "Trying to load")):
            return ln
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def weights_only_loads():
    """While active, every ``torch.load`` in this process uses torch's weights-only unpickler, even where
    the caller asks for ``weights_only=False`` (DeepSpeed's checkpoint engine does): a pickle that would
    run code (e.g. one planted in ``global_stepN/*.pt``) is refused with ``pickle.UnpicklingError``
    instead of executed. Uses torch's own switch, ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, and its allowlist
    (``torch.serialization.safe_globals``) for DeepSpeed's data classes."""
    import torch

    old = os.environ.get(WEIGHTS_ONLY_ENV)
    os.environ[WEIGHTS_ONLY_ENV] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_state_globals()):
            yield
    finally:
        if old is None:
            os.environ.pop(WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[WEIGHTS_ONLY_ENV] = old


# ---------------------------------------------------------------------------------------------- final outputs
def _resume_only(name: str) -> bool:
    """Files of a checkpoint that only a resume needs (not part of the final outputs)."""
    return name in (OPTIMIZER_NAME, SCHEDULER_NAME, "scaler.pt", "training_args.bin", "latest", "zero_to_fp32.py",
                    MANIFEST_NAME, RUN_RECORD_NAME, TRAINER_STATE_NAME) or name.startswith("rng_state")


def write_final_outputs(output_dir: str | os.PathLike, checkpoint: str | os.PathLike,
                        write_trainer_state: Callable[[str], object] | None = None) -> list[str]:
    """Make the run's root hold its final outputs, taken from its last checkpoint, and the root manifest.

    The trained weights (and config, tokenizer ...) are the last checkpoint's, hard-linked; the
    root ``trainer_state.json`` is written by ``write_trainer_state(path)`` (the in-memory state, with
    the run's summary) or copied from the checkpoint. The old root manifest goes first and the new one
    is written last, so at no moment does an incomplete root look finished. Returns the final files.
    """
    out, ckpt = Path(output_dir), Path(checkpoint)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    fsync_dir(out)
    names = sorted(p.name for p in ckpt.iterdir() if p.is_file() and not _resume_only(p.name))
    for name in names:
        link_or_copy(ckpt / name, out / name)
    if write_trainer_state is None:
        link_or_copy(ckpt / TRAINER_STATE_NAME, out / TRAINER_STATE_NAME)
    else:
        atomic_write(out / TRAINER_STATE_NAME, write_trainer_state)
    files = names + [TRAINER_STATE_NAME] + ([RUN_RECORD_NAME] if (out / RUN_RECORD_NAME).is_file() else [])
    write_manifest(out, read_manifest(ckpt)["step"], files)
    return files


# ---------------------------------------------------------------------------------------------- several processes
class FollowedError(LRCError):
    """Raised on the other ranks when the main process's decision failed: same code, printed once (by main)."""

    quiet = True

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def decided_on_main(fn: Callable[[], Any], main: bool) -> Any:
    """Run ``fn`` on the main process only and hand its result (or its one-line failure) to every rank.

    Output-directory decisions (lock, resume plan) are taken once, by the process that owns the
    directory; under ``torch.distributed`` the other ranks receive the same answer.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    box: list[Any] = [None]
    failure: BaseException | None = None
    if main:
        try:
            box = [("ok", fn())]
        except LRCError as e:
            failure, box = e, [("error", str(e), e.exit_code)]
        except OSError as e:
            from lrc.errors import EXIT_USER, describe_os_error

            failure, box = e, [("error", describe_os_error(e), EXIT_USER)]
        except BaseException as e:
            failure, box = e, [("error", f"the main process failed ({type(e).__name__}: {e})", 1)]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0][0] == "error":
        raise FollowedError(box[0][1], box[0][2])
    return box[0][1]
