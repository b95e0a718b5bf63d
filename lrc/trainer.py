"""LRCTrainer: the HF ``Trainer`` taught four LRC-specific things.

1. **Loss and optimizer.** ``compute_loss`` runs ``LRCModel`` and returns ``out.loss``; the optimizer
   is AdamW over ``model.trainable_parameters()`` only (betas (0.9, adam_beta2), eps 1e-8, weight
   decay 0, as the official code), so the frozen teacher never reaches it.
2. **Logging without per-step host syncs.** Every micro-step adds the loss components (``loss``,
   ``ce``, ``kl``, ``clone``, every clone term summed over layers, and every per-layer term
   ``L{layer}-{term}``) to one on-device vector (``LossMeter``). At each logging step the window
   means are reduced over processes and copied to the host once, and join HF's own ``loss`` /
   ``grad_norm`` / ``learning_rate`` in ``log_history`` (hence ``trainer_state.json``), wandb and
   tensorboard. Term values are unweighted; ``clone`` is alpha x their sum (what the loss adds).
   The console line leaves out the per-layer keys. Evaluation (``--eval_dataset``) scores the
   student alone: ``eval_loss`` = ``eval_ce`` = its next-token CE, plus ``eval_ppl``.
3. **Checkpoints hold only what trains.** ``save_model`` / ``_save`` write the projections and
   student gains plus the LRC config and teacher identity (``lrc.checkpoint.save_lrc_checkpoint``:
   ``lrc_weights.safetensors`` + ``lrc_config.json``), never the teacher, for periodic checkpoints
   and the final save alike. Resuming loads them back (``_load_from_checkpoint``); optimizer,
   scheduler, RNG and trainer state come from HF's own files. (Under DeepSpeed the engine's own
   checkpoint restores the module, as HF does; it contains the frozen teacher too.)
4. **Atomic checkpoints and a non-finite guard.** transformers 5.24's ``_save_checkpoint`` writes
   straight into ``checkpoint-N`` (no staging). Here every process writes into
   ``{output_dir}/.staging/checkpoint-N`` (``_get_output_dir`` points there for the duration of
   HF's ``_save_checkpoint``), files are fsynced, and after a barrier the main process renames the
   finished directory to ``checkpoint-N`` (one atomic rename). A run killed at any moment leaves
   every ``checkpoint-N`` either complete or absent; old checkpoints are rotated out by first
   renaming them into ``.staging``. Before anything is saved, and at every logging step, the
   on-device record of the first non-finite micro-step is checked; if there was one, training stops
   with ``NonFiniteLossError`` naming the optimizer step and the non-finite components, and nothing
   is written. The check costs one sync per logging step / save, none per micro-step: the step and
   terms of the *first* bad micro-step are recorded on the device, so the report is exact even
   though it arrives up to ``logging_steps`` steps later, and weights corrupted in between are never
   saved because every save checks first.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, TeacherRef, list_checkpoints,
                         load_into_projections, load_lrc_checkpoint, save_lrc_checkpoint)
from .data import collate_batch
from .evaluate import ce_sum
from .baselines import BASELINE_CONFIG_NAME, MAPS_NAME, BaselineModel
from .model import LRCModel, LRCOutput

STAGING_DIR = ".staging"
"""Sub-directory of ``output_dir`` where checkpoints are written before being renamed into place."""
TRAINER_STATE = "trainer_state.json"
HF_WEIGHTS_NAME = "model.safetensors"
"""A baseline's weights: the student as a standard HF checkpoint."""
_LAYER_KEY_RE = re.compile(r"^L\d+-")
# Fields of the LRC config that may differ between a checkpoint and the run resuming from it.
_RESUME_FREE_FIELDS = ("logits_chunk_tokens",)


class NonFiniteLossError(RuntimeError):
    """The loss (or one of its components) became NaN or infinite; training stopped, nothing was saved."""


# ---------------------------------------------------------------------------------------------- checkpoints
def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A ``checkpoint-N`` directory with its weights (LRC's, or a baseline's ``model.safetensors``) and
    trainer state."""
    p = Path(path)
    has_weights = (p / WEIGHTS_NAME).is_file() or (p / HF_WEIGHTS_NAME).is_file()
    return has_weights and (p / TRAINER_STATE).is_file()


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete ``checkpoint-N`` with the largest N in ``output_dir`` (None if there is none)."""
    for _, p in reversed(list_checkpoints(output_dir)):
        if is_complete_checkpoint(p):
            return p
    return None


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk (power-loss safety before the rename)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _discard(path: Path, staging: Path) -> None:
    """Remove a directory so that it disappears at once: rename it into ``staging``, then delete it."""
    staging.mkdir(parents=True, exist_ok=True)
    trash = staging / f"discard-{path.name}-{os.getpid()}"
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def publish_checkpoint(staged: Path, final: Path) -> None:
    """Move a finished, staged checkpoint into place with one rename (replacing an older one)."""
    _fsync_tree(staged)
    if final.exists():  # e.g. a previous run got this far, then was resumed from an earlier checkpoint
        _discard(final, staged.parent)
    os.replace(staged, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotate_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Keep the ``limit`` newest checkpoints (by step); older ones vanish atomically (``_discard``)."""
    if not limit or limit <= 0:
        return
    ckpts = list_checkpoints(output_dir)
    for _, p in ckpts[:-limit]:
        _discard(p, output_dir / STAGING_DIR)


# ---------------------------------------------------------------------------------------------- logging
class LossMeter:
    """Window sums of the loss components, kept on the device (no host sync until ``read``).

    Each ``add`` stacks one micro-step's components into a vector of fixed layout (``keys``), adds it
    to the window sum, and, the first time any entry is non-finite, records the optimizer step and
    which entries were bad.
    """

    def __init__(self) -> None:
        self.keys: list[str] | None = None
        self.sum: Tensor | None = None
        self.count = 0  # micro-steps in the window (host int, no sync)
        self.first_bad_step: Tensor | None = None  # () int64, -1 while everything was finite
        self.bad_at_first: Tensor | None = None  # (K,) bool: the non-finite entries at that micro-step

    @staticmethod
    def flatten(out: LRCOutput) -> tuple[list[str], list[Tensor]]:
        keys = ["loss", "ce", "kl", "clone"]
        vals = [out.loss.detach(), out.ce, out.kl, out.clone]
        for name in sorted(out.terms):
            keys.append(name)
            vals.append(out.terms[name])
        for (layer, name) in sorted(out.layer_terms):
            keys.append(f"L{layer}-{name}")
            vals.append(out.layer_terms[(layer, name)])
        return keys, vals

    def add(self, out: LRCOutput, step: int) -> None:
        keys, vals = self.flatten(out)
        vec = torch.stack([v.float().reshape(()) for v in vals])  # (K,)
        if self.keys is None:
            self.keys = keys
            self.sum = torch.zeros_like(vec)
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=vec.device)
            self.bad_at_first = torch.zeros(vec.shape, dtype=torch.bool, device=vec.device)
        elif keys != self.keys:
            raise RuntimeError(f"the set of logged loss terms changed between steps: {self.keys} -> {keys}")
        self.sum += vec
        self.count += 1
        bad = ~torch.isfinite(vec)
        first = (self.first_bad_step < 0) & bad.any()
        self.first_bad_step = torch.where(first, step, self.first_bad_step)
        self.bad_at_first = torch.where(first, bad, self.bad_at_first)

    def reset_window(self) -> None:
        if self.sum is not None:
            self.sum.zero_()
        self.count = 0


# ---------------------------------------------------------------------------------------------- console
class _CompactLogs:
    """Console output only: per-layer keys (``L3-mlp-up-loss``) stay out of the printed line; they still
    reach ``log_history``, wandb and tensorboard."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: v for k, v in (logs or {}).items() if not _LAYER_KEY_RE.match(k)}
        return super().on_log(args, state, control, logs=shown, **kwargs)


class CompactProgressCallback(_CompactLogs, ProgressCallback):
    pass


class CompactPrinterCallback(_CompactLogs, PrinterCallback):
    pass


# ---------------------------------------------------------------------------------------------- trainer
class LRCTrainer(Trainer):
    """``Trainer`` for an ``LRCModel`` (see the module docstring). ``teacher_ref`` is stored in checkpoints."""

    # compute_loss returns a per-micro-batch mean: HF divides it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False
    model_class: type = LRCModel

    def __init__(self, model: LRCModel, args: TrainingArguments, teacher_ref: TeacherRef,
                 train_dataset=None, eval_dataset=None, callbacks=None):
        if not isinstance(model, self.model_class):
            raise TypeError(f"{type(self).__name__} trains a {self.model_class.__name__}, got {type(model).__name__}")
        super().__init__(model=model, args=args, data_collator=collate_batch, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, callbacks=callbacks)
        self.teacher_ref = teacher_ref
        self.model_accepts_loss_kwargs = False  # LRCModel.forward takes no num_items_in_batch
        self.meter = LossMeter()
        self._staging_root: str | None = None
        for old, new in ((ProgressCallback, CompactProgressCallback), (PrinterCallback, CompactPrinterCallback)):
            if self.pop_callback(old) is not None:
                self.add_callback(new)

    # ------------------------------------------------------------------ model, optimizer, loss
    @property
    def lrc_model(self) -> LRCModel:
        return self.accelerator.unwrap_model(self.model)

    @property
    def scored_model(self) -> torch.nn.Module:
        """What evaluation scores: the training-time student (``ce_sum`` generates an LRC student's weights)."""
        return self.lrc_model

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW over the explicit trainable list (projections + student gains), as the official code."""
        if self.optimizer is None:
            a = self.args
            self.optimizer = torch.optim.AdamW(self.lrc_model.trainable_parameters(), lr=a.learning_rate,
                                               betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon,
                                               weight_decay=a.weight_decay)
        return self.optimizer

    def compute_loss(self, model, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch=None):
        out: LRCOutput = model(**inputs)
        if model.training:
            self.meter.add(out, self.state.global_step + 1)  # the optimizer step this micro-step belongs to
        return (out.loss, out) if return_outputs else out.loss

    def prediction_step(self, model, inputs: dict[str, Tensor], prediction_loss_only: bool, ignore_keys=None):
        """Evaluation scores the student alone: its next-token CE (the teacher is not run)."""
        inputs = self._prepare_inputs(inputs)
        total, count = ce_sum(self.scored_model, inputs)
        return (total / count.clamp_min(1)).detach(), None, None

    # ------------------------------------------------------------------ logging and the non-finite guard
    def _raise_if_nonfinite(self) -> None:
        """One sync (and one gather across processes): raise if any micro-step so far was non-finite."""
        m = self.meter
        if m.keys is None:
            return
        info = torch.cat([m.first_bad_step.reshape(1).float(), m.bad_at_first.float()])[None]  # (1, 1+K)
        if self.accelerator.num_processes > 1:
            info = self.accelerator.gather(info)  # (world, 1+K)
        rows = [r for r in info.tolist() if r[0] >= 0]
        if not rows:
            return
        step, *flags = min(rows, key=lambda r: r[0])
        bad = [k for k, f in zip(m.keys, flags) if f]
        components = [k for k in bad if not _LAYER_KEY_RE.match(k) and k != "loss"] or ["loss"]
        layers = [k for k in bad if _LAYER_KEY_RE.match(k)]
        where = f" (per layer: {', '.join(layers[:6])}{' ...' if len(layers) > 6 else ''})" if layers else ""
        raise NonFiniteLossError(
            f"non-finite loss at step {int(step)}: {', '.join(components)} became NaN/inf{where}; training "
            f"stopped and nothing was saved after it (last good checkpoint: "
            f"{latest_checkpoint(self.args.output_dir) or 'none'}). Try a lower --learning-rate, "
            f"--max_grad_norm, or check the data"
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        nonfinite = None
        if "loss" in logs and "learning_rate" in logs and self.meter.count > 0:  # a training log line
            m = self.meter
            means = m.sum / m.count
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            for k, v in zip(m.keys, means.tolist()):
                if k != "loss":  # HF's own "loss" (per optimizer step) stays as it is
                    logs[k] = v
            m.reset_window()
            try:
                self._raise_if_nonfinite()
            except NonFiniteLossError as e:
                nonfinite = e
        if "eval_loss" in logs:
            logs["eval_ce"] = logs["eval_loss"]
            logs["eval_ppl"] = math.exp(min(logs["eval_loss"], 700.0))
        super().log(logs, start_time)
        if nonfinite is not None:  # logged first (the NaN line is informative), then stop
            raise nonfinite

    # ------------------------------------------------------------------ saving
    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """What a checkpoint holds, by name: the projections and student gains."""
        return list(self.lrc_model.projections.named_parameters())

    def _trainable_state_dict(self) -> dict[str, Tensor]:
        """The trainable tensors; under DeepSpeed the fp32 master copies (a collective: all ranks call)."""
        named = self._named_trainable()
        if self.is_deepspeed_enabled:
            from deepspeed.utils import safe_get_full_fp32_param

            return {n: safe_get_full_fp32_param(p).detach().cpu() for n, p in named}
        return {n: p.detach() for n, p in named}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the trainable weights (never the teacher): ``_write_checkpoint``."""
        self._raise_if_nonfinite()
        self._save(output_dir, state_dict=self._trainable_state_dict())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        named = self._named_trainable()
        if state_dict is None or set(state_dict) != {n for n, _ in named}:
            state_dict = {n: p.detach() for n, p in named}  # local copy: no collective on one rank
        self._write_checkpoint(output_dir, state_dict)

    def _write_checkpoint(self, output_dir: str, state_dict: dict[str, Tensor]) -> None:
        """``lrc_weights.safetensors`` + ``lrc_config.json`` (LRC config and teacher identity)."""
        lrc = self.lrc_model
        save_lrc_checkpoint(output_dir, lrc.projections, lrc.lrc_config, self.teacher_ref, state_dict=state_dict)

    def _get_output_dir(self, trial) -> str:
        return self._staging_root if self._staging_root is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """HF's checkpoint (weights, optimizer, scheduler, RNG, trainer state), staged and renamed into place."""
        self._raise_if_nonfinite()  # before any file is touched
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = run_dir / STAGING_DIR
        if self.args.should_save:
            staging.mkdir(parents=True, exist_ok=True)
            if (staging / name).exists():  # leftover of a run killed while saving this step
                shutil.rmtree(staging / name)
        self.accelerator.wait_for_everyone()
        self._staging_root = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # every rank writes into staging/checkpoint-N
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_checkpoint(staging / name, run_dir / name)
        self.accelerator.wait_for_everyone()
        if self.is_local_process_zero() and (staging / name).exists():
            publish_checkpoint(staging / name, run_dir / name)  # node-local disks: each node's own copy
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit)
            try:
                staging.rmdir()  # only when empty: nothing half-written is left behind
            except OSError:
                pass

    # ------------------------------------------------------------------ resuming
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Restore the projections and gains from ``lrc_weights.safetensors`` (strict: names, shapes, config)."""
        ckpt_dir = Path(resume_from_checkpoint)
        if not (ckpt_dir / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"cannot resume from {str(ckpt_dir)!r}: no {WEIGHTS_NAME} in it")
        ckpt = load_lrc_checkpoint(ckpt_dir / WEIGHTS_NAME)
        lrc = self.lrc_model
        check_resume_compatible(ckpt.lrc.to_dict(), lrc.lrc_config.to_dict(), ckpt_dir)
        if ckpt.teacher is not None and ckpt.teacher.config_hash and \
                ckpt.teacher.config_hash != self.teacher_ref.config_hash:
            raise CheckpointError(f"cannot resume from {str(ckpt_dir)!r}: it was trained against another teacher "
                                  f"({ckpt.teacher.name_or_path}, config hash {ckpt.teacher.config_hash}) than "
                                  f"{self.teacher_ref.name_or_path} (hash {self.teacher_ref.config_hash})")
        load_into_projections(lrc.projections, ckpt.weights, what=f"checkpoint {ckpt_dir}")


def check_resume_compatible(stored: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse to resume a checkpoint under a different LRC configuration (names the differing fields)."""
    diff = [f"{k}: checkpoint {stored.get(k)!r} vs now {current.get(k)!r}" for k in sorted(set(stored) | set(current))
            if k not in _RESUME_FREE_FIELDS and stored.get(k) != current.get(k)]
    if diff:
        raise CheckpointError(f"cannot resume from {str(where)!r} with a different LRC configuration ({'; '.join(diff)}); "
                              f"use the checkpoint's settings (see its {CONFIG_NAME}), or --load_model_weight_path "
                              f"for a warm start without optimizer state")


# ---------------------------------------------------------------------------------------------- baselines
class BaselineTrainer(LRCTrainer):
    """``LRCTrainer`` for a ``BaselineModel`` (``--model_cls origin | only_kd | tiny_bert``).

    Same optimizer (AdamW over ``trainable_parameters()``: the student and tiny_bert's maps, never the
    teacher), logging, non-finite guard and atomic checkpoints. What differs is what a checkpoint
    holds: the student as a standard HF checkpoint (``config.json``, ``model.safetensors``,
    ``generation_config.json``) plus ``baseline_config.json`` and, for tiny_bert, its maps.
    """

    model_class: type = BaselineModel

    @property
    def scored_model(self) -> torch.nn.Module:
        return self.lrc_model.student

    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``student.``/``maps.``-prefixed trainable tensors."""
        m = self.lrc_model
        return [(f"student.{n}", p) for n, p in m.student.named_parameters()] + \
               [(f"maps.{n}", p) for n, p in m.maps.named_parameters()]

    def _write_checkpoint(self, output_dir: str, state_dict: dict[str, Tensor]) -> None:
        save_baseline_checkpoint(output_dir, self.lrc_model, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_baseline_checkpoint(resume_from_checkpoint, self.lrc_model)


def save_baseline_checkpoint(directory: str | os.PathLike, model: BaselineModel, state_dict: dict[str, Tensor]) -> None:
    """Write the student (standard HF files), ``baseline_config.json`` and tiny_bert's maps into ``directory``.

    Every file is written under a temporary name and renamed (``save_pretrained`` into a temporary
    sub-directory whose files are then moved in), so a killed save leaves no half-written file.
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".tmp-save-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    student_sd = {k[len("student."):]: v.contiguous() for k, v in state_dict.items() if k.startswith("student.")}
    maps_sd = {k[len("maps."):]: v.contiguous() for k, v in state_dict.items() if k.startswith("maps.")}
    model.student.save_pretrained(tmp, state_dict=student_sd)
    if maps_sd:
        save_file(maps_sd, str(tmp / MAPS_NAME), metadata={"format": "pt"})
    (tmp / BASELINE_CONFIG_NAME).write_text(model.cfg.to_json())
    for f in sorted(tmp.iterdir()):
        os.replace(f, d / f.name)
    tmp.rmdir()


def load_baseline_checkpoint(directory: str | os.PathLike, model: BaselineModel) -> None:
    """Restore a baseline's student (and maps) from a checkpoint written by ``save_baseline_checkpoint``.

    Strict: the method, the student architecture and every tensor name and shape must match.
    """
    import json

    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / HF_WEIGHTS_NAME).is_file():
        raise CheckpointError(f"cannot resume from {str(d)!r}: no {HF_WEIGHTS_NAME} in it (not a baseline checkpoint)")
    cfg_file = d / BASELINE_CONFIG_NAME
    if cfg_file.is_file():
        stored = json.loads(cfg_file.read_text())
        current = model.cfg.to_dict()
        diff = [k for k in ("method", "attn_loss") if stored.get(k) != current.get(k)]
        if diff:
            raise CheckpointError(f"cannot resume from {str(d)!r}: it was trained with "
                                  + ", ".join(f"{k}={stored.get(k)!r}" for k in diff)
                                  + " but this run has " + ", ".join(f"{k}={current.get(k)!r}" for k in diff))
        check_resume_compatible(stored.get("lrc", {}), current["lrc"], d)
    _load_strict(model.student, load_file(str(d / HF_WEIGHTS_NAME)), f"{d / HF_WEIGHTS_NAME}", tied_ok=True)
    if len(model.maps):
        if not (d / MAPS_NAME).is_file():
            raise CheckpointError(f"cannot resume tiny_bert from {str(d)!r}: {MAPS_NAME} is missing")
        _load_strict(model.maps, load_file(str(d / MAPS_NAME)), f"{d / MAPS_NAME}")


def _load_strict(module: torch.nn.Module, sd: dict[str, Tensor], what: str, tied_ok: bool = False) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    if tied_ok and getattr(module.config, "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = sorted(set(sd) - set(own))
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{what} does not fit this run's model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shape mismatch {bad[:5]}")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)
