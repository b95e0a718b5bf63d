"""What conversion checks, before anything is folded and before anything is written (``lrc.after.convert``):

- the source (``SourceInfo``): the weights a ``--ckpt-path`` names, verified against their manifest, with the step
  and a note when the run holds a newer complete checkpoint than the final weights converted;
- the destination (``check_save_path``): never a training run, a checkpoint or a teacher, never inside a checkpoint
  or a teacher's directory and never containing any of them; ``--overwrite`` replaces only an earlier conversion's
  output; what a killed conversion left beside it is cleared;
- the result (``check_finite_output``): finite weights, and finite logits on a short test input.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from lrc.checkpoint import (
    WEIGHTS_NAME,
    checkpoint_step,
    list_checkpoints,
    resolve_weights_file,
)
from lrc.errors import LRCError
from lrc.files import MANIFEST_NAME, clear_stale_temporaries, read_manifest
from lrc.teacher import nonfinite_weight
from lrc.training.run_dir import (
    LOCK_NAME,
    RUN_RECORD_NAME,
    STAGING_DIR,
    TRAINER_STATE_NAME,
    verify_checkpoint,
)

log = logging.getLogger(__name__)


CONVERSION_RECORD = "lrc_conversion.json"
"""What a converted directory records about its source (and how ``--overwrite`` knows it wrote the directory)."""


class ConversionError(LRCError, ValueError):
    """Conversion cannot proceed; the message says what and where."""


class SourceInfo:
    """The weights file a ``--ckpt-path`` names, checked against its manifest, with its step and notes."""

    def __init__(self, weights: Path, step: int | None, verified: bool, notes: list[str]):
        self.weights, self.step, self.verified, self.notes = weights, step, verified, notes

    def describe(self) -> str:
        return (f"step {self.step if self.step is not None else '?'} of {self.weights.parent}"
                + ("" if self.verified else " (no manifest: not verified)"))

    @classmethod
    def of(cls, ckpt_path: str | os.PathLike) -> "SourceInfo":
        """Resolve ``ckpt_path`` (file, ``checkpoint-N`` or run directory) and verify what it names.

        A directory with a manifest must verify (else ConversionError naming the problem). A run directory
        without final weights converts its newest complete checkpoint, saying which it skipped; one whose final
        weights are older than a complete checkpoint (an extension that did not finish) converts the final
        weights, with a note naming the newer checkpoint."""
        p = Path(ckpt_path)
        notes: list[str] = []
        searched = None  # the checkpoint the search below verified whole
        if p.is_dir() and not (p / WEIGHTS_NAME).is_file() and not (p / "model.safetensors").is_file():
            ckpts = [c for _, c in reversed(list_checkpoints(p)) if (c / WEIGHTS_NAME).is_file()]
            for c in ckpts:
                problem = verify_checkpoint(c) if (c / MANIFEST_NAME).is_file() else None
                if problem is None:
                    p = searched = c
                    break
                notes.append(f"skipped {c} ({problem})")
            else:
                if ckpts:
                    raise ConversionError(f"--ckpt-path {str(ckpt_path)!r}: no checkpoint in it verifies against its "
                                          f"manifest ({'; '.join(notes)})")
        weights = resolve_weights_file(p)
        directory = weights.parent
        verified = (directory / MANIFEST_NAME).is_file()
        step = None
        if verified:
            # what conversion reads: its size and sha256 (and the manifest's step is the directory's)
            problem = None if directory == searched else verify_checkpoint(directory, only=[weights.name])
            if problem:
                raise ConversionError(f"{directory} does not verify against its manifest: {problem}; convert another "
                                      f"checkpoint (nothing was written)")
            step = read_manifest(directory)["step"]
        else:
            step = _trainer_state_step(directory)
        newer = [(s, c) for s, c in list_checkpoints(directory) if step is not None and s > step
                 and (c / WEIGHTS_NAME).is_file() and verify_checkpoint(c, hashes=False) is None]
        if newer:
            s_new, c_new = newer[-1]
            notes.append(f"{c_new} (step {s_new}) is newer than the final weights converted here (step {step}): an "
                         f"extension of this run did not finish; --ckpt-path {c_new} converts it")
        return cls(weights, step, verified, notes)


def _trainer_state_step(directory: Path) -> int | None:
    try:
        return int(json.loads((directory / TRAINER_STATE_NAME).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


_RUN_NAMES = (RUN_RECORD_NAME, MANIFEST_NAME, LOCK_NAME, STAGING_DIR, WEIGHTS_NAME, TRAINER_STATE_NAME)


def _holds_run(d: Path) -> bool:
    """``d`` is a training run's directory (its record, lock, manifest, staging or checkpoints) or a checkpoint."""
    if not d.is_dir():
        return False
    if any((d / n).exists() for n in (RUN_RECORD_NAME, LOCK_NAME, STAGING_DIR)) or list_checkpoints(d):
        return True
    return (d / MANIFEST_NAME).is_file() or (checkpoint_step(d) is not None and (d / WEIGHTS_NAME).is_file())


def _holds_model(d: Path) -> bool:
    """``d`` holds a model that is not an earlier conversion's output (a teacher, say)."""
    return d.is_dir() and (d / "config.json").is_file() and not (d / CONVERSION_RECORD).is_file()


def _within(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or below it."""
    return a == b or b in a.parents


def check_save_path(out: Path, overwrite: bool, source: Path, teacher: Path | None = None) -> None:
    """Refuse a ``--save-path`` that conversion must never write (module docstring), in one line, before anything
    is read or written; then remove what killed conversions left beside it. ``source``: the directory of the weights
    converted; ``teacher``: the teacher's directory or file."""
    o = out.resolve()

    def refuse(what: str) -> ConversionError:
        return ConversionError(f"--save-path {str(out)!r} {what}; conversion never writes there: choose a new "
                               f"directory (nothing was written)")

    for g, name in ((source, "the checkpoint converted"), (teacher, "the teacher")):
        if g is not None and g.exists() and _within(g.resolve(), o):
            raise refuse(f"{'is' if g.resolve() == o else 'contains'} {name} ({g})")
    t = teacher.resolve() if teacher is not None and teacher.exists() else None
    if t is not None and _within(o, t.parent if t.is_file() else t):
        raise refuse(f"is inside the teacher's directory ({t.parent if t.is_file() else t})")
    if _holds_run(o):
        raise refuse("is a training run or a checkpoint")
    parent = o.parent
    if _holds_run(parent) and checkpoint_step(parent) is None and parent.name != STAGING_DIR:
        # a new directory beside a run's checkpoints (OUT/student): the run never writes, rotates or deletes it
        if checkpoint_step(o) is not None or o.name in _RUN_NAMES or o.name.startswith("."):
            raise refuse(f"is a name the training run in {parent} uses (e.g. use {parent / 'student'})")
    else:
        for d in o.parents:
            if _holds_run(d) or d.name == STAGING_DIR:
                raise refuse(f"is inside a training run or a checkpoint ({d})")
            if _holds_model(d):
                raise refuse(f"is inside a model's directory ({d})")
    if o.exists():
        if o.is_file():
            raise ConversionError(f"--save-path {str(out)!r} is a file")
        if any(o.iterdir()):
            if not overwrite:
                raise ConversionError(f"--save-path {str(out)!r} exists and is not empty (pass --overwrite to replace "
                                      f"an earlier conversion's output)")
            if not (o / CONVERSION_RECORD).is_file():
                raise refuse(f"holds files that lrc convert did not write (no {CONVERSION_RECORD}); --overwrite "
                             f"replaces only an earlier conversion's output")
    for leftover in clear_stale_temporaries(o):
        log.warning("removed %s: left by a conversion into %s that was killed", leftover, o)


@torch.no_grad()
def check_finite_output(student: torch.nn.Module, source: SourceInfo) -> None:
    """Refuse a student whose weights or logits on a short test input are NaN/inf: weights that diverged in training
    (the run's non-finite guard names the last good checkpoint)."""
    bad = nonfinite_weight(student)
    if bad:
        raise ConversionError(f"the converted student's {bad} (NaN/inf): {source.describe()} holds weights that "
                              f"diverged; convert an earlier checkpoint (nothing was written)")
    vocab = student.config.vocab_size
    ids = (torch.arange(16) * 7919 % vocab)[None].to(next(student.parameters()).device)
    logits = student(input_ids=ids, use_cache=False).logits
    if not bool(torch.isfinite(logits).all()):
        raise ConversionError(f"the converted student gives NaN/inf logits on a test input: {source.describe()} holds "
                              f"weights that diverged (largest |weight| "
                              f"{max(float(p.abs().max()) for p in student.parameters()):.3g}); convert an earlier "
                              f"checkpoint (nothing was written)")
