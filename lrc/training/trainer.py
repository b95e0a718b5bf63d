"""The distillation trainers: ``DistillTrainer`` (what every run here needs from the HF ``Trainer``) and its two
subclasses, ``LRCTrainer`` (an ``LRCModel``: checkpoints of projections, weights generated once per step, sharded
generation, diagnostics) and ``BaselineTrainer`` (a ``BaselineModel``: checkpoints of a standard HF student).

What they change in the HF ``Trainer`` (items 1-5: ``DistillTrainer``; 3 and 6: ``LRCTrainer`` / ``BaselineTrainer``):

1. **Loss and optimizer.** ``compute_loss`` runs ``LRCModel`` and returns ``out.loss``; the optimizer
   is AdamW over ``model.trainable_parameters()`` only (betas (0.9, adam_beta2), eps 1e-8, weight
   decay 0, as the official code), so the frozen teacher never reaches it.
2. **Logging without per-step host syncs.** Every micro-step adds the loss components (``loss``,
   ``ce``, ``kl``, ``clone``, every clone term summed over layers, and every per-layer term
   ``L{layer}-{term}``) to one on-device vector (``lrc.training.loss_log.LossMeter``). At each logging step the window
   means are reduced over processes and copied to the host once, and join HF's own ``loss`` /
   ``grad_norm`` / ``learning_rate`` in ``log_history`` (hence ``trainer_state.json``), wandb and
   tensorboard. Every ``diagnostics_steps`` steps ``lrc.diagnostics`` adds the hidden states' effective
   ranks and the projections' condition numbers. Term values are unweighted; ``clone`` is alpha x their sum (what the loss adds).
   The console line leaves out the per-layer keys. Evaluation (``--eval_dataset``) scores the
   student alone: ``eval_loss`` = ``eval_ce`` = its next-token CE, plus ``eval_ppl``.
3. **Checkpoints hold only what trains.** ``save_model`` / ``_save`` write the projections and
   student gains plus the LRC config and teacher identity (``lrc.checkpoint.save_lrc_checkpoint``:
   ``lrc_weights.safetensors`` + ``lrc_config.json``), never the teacher. Resuming loads them back
   (``_load_from_checkpoint``); optimizer, scheduler, RNG and trainer state come from HF's own files,
   all read by torch's weights-only unpickler (``lrc.training.run_dir.weights_only_loads``). (Under DeepSpeed
   the engine's own checkpoint restores the module, as HF does; it contains the frozen teacher too.)
4. **The run-directory contract** (``lrc.training.run_dir``, ``lrc.training.resume``, ``lrc.training.publish``).
   Every process writes a checkpoint into ``{output_dir}/.staging/checkpoint-N`` (``publish.StagedCheckpoints``,
   shared with ``lrc onpolicy``'s trainer: its ``_get_output_dir`` points there for the duration of HF's
   ``_save_checkpoint``); after a barrier the main process adds the run's record (``run_config.json``) and the
   manifest (sizes and sha256 of every file, written last), and renames the directory to ``checkpoint-N``. A
   checkpoint is complete exactly when its manifest verifies. A failed save (e.g. a full disk) removes its staging
   copy and publishes nothing. A resume that
   changes the batch geometry or the schedule (``--allow_changed``) is applied here: the data
   position is recomputed in samples (``_init_training_state``), the learning rate and AdamW betas of
   the restored optimizer are replaced (``_load_optimizer_and_scheduler``).
5. **A non-finite guard.** Before anything is saved, and at every logging step, the on-device record
   of the first non-finite micro-step is checked; if there was one, training stops with
   ``NonFiniteLossError`` naming the optimizer step and the non-finite components, and nothing is
   written. The check costs one sync per logging step / save, none per micro-step: the step and
   terms of the *first* bad micro-step are recorded on the device, so the report is exact even
   though it arrives up to ``logging_steps`` steps later, and weights corrupted in between are never
   saved because every save checks first.
6. **When and where the student's weights are generated.** Under gradient accumulation each micro-batch
   tells the model whether it ends the optimizer step (``window_end`` = accelerate's ``sync_gradients``),
   so the weights are generated once per step (``lrc.generation_window``; ``generation_once_per_step``
   false turns it off). With several processes per node the generation can be sharded over them
   (``lrc.sharded_generation.setup_sharded_generation``).

Items 3 and 4 override private ``transformers.Trainer`` methods; they are listed, with what each relies on, in
``HF_PRIVATE_OVERRIDES`` and grouped in one section of ``DistillTrainer``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer, TrainingArguments

from lrc.after.evaluate import ce_sum
from lrc.baselines import BaselineModel, load_baseline_checkpoint, save_baseline_checkpoint
from lrc.checkpoint import (
    CheckpointError,
    TeacherRef,
    check_resume_compatible,
    core_basis_note,
    load_into_projections,
    load_lrc_checkpoint,
    save_lrc_checkpoint,
)
from lrc.data.datasets import collate_batch
from lrc.files import write_json_atomic
from lrc.model import LRCModel, LRCOutput
from lrc.sharded_generation import setup_sharded_generation
from lrc.training import publish
from lrc.training.loss_log import LAYER_KEY_RE, LossMeter, NonFiniteLossError, use_compact_console
from lrc.training.record import live_checkpoints
from lrc.training.resume import BATCH_GEOMETRY, SCHEDULE_FLAGS, ResumePlan, data_position
from lrc.training.run_dir import RUN_RECORD_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)

HF_PRIVATE_OVERRIDES: dict[str, str] = {
    "_get_output_dir": "called by Trainer._save_checkpoint for the directory the checkpoint-N folder goes in "
                       "(pointed at OUT/.staging while a checkpoint is written)",
    "_save_checkpoint": "writes checkpoint-N: save_model, optimizer/scheduler, RNG and trainer state, then rotation "
                        "(wrapped: staged, recorded, manifested, renamed)",
    "_save": "called by save_model with (output_dir, state_dict) to write the weights",
    "_init_training_state": "returns (epochs_trained, steps_trained_in_current_epoch) of a resumed run",
    "_load_optimizer_and_scheduler": "restores the optimizer and the lr scheduler from a checkpoint directory",
    "_load_from_checkpoint": "restores the model's weights from a checkpoint directory when resuming",
}
"""The private ``transformers.Trainer`` methods these trainers override, and what they rely on each one doing (the
``transformers>=5,<6`` pin alone does not hold them: ``tests/test_hf_overrides.py`` checks each against the installed
release and fails naming the one that changed)."""


class DistillTrainer(publish.StagedCheckpoints, Trainer):
    """``Trainer`` for a model whose ``forward`` returns an ``LRCOutput`` and which names its own
    ``trainable_parameters()`` (module docstring, items 1-5). Subclasses say what a checkpoint holds
    (``_named_trainable``, ``_write_checkpoint``, ``_load_from_checkpoint``) and what evaluation scores
    (``scored_model``). ``teacher_ref`` is stored in checkpoints."""

    # compute_loss returns a per-micro-batch mean: HF divides it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False
    model_class: type = torch.nn.Module
    """The model type this trainer trains (checked at construction)."""

    def __init__(self, model: torch.nn.Module, args: TrainingArguments, teacher_ref: TeacherRef,
                 train_dataset=None, eval_dataset=None, callbacks=None, run_record: dict[str, Any] | None = None,
                 resume_plan: ResumePlan | None = None):
        """``run_record``: written into every checkpoint (``lrc.training.resume.run_record``); ``resume_plan``: the
        checkpoint's record and the changes allowed on resume (``lrc.training.resume.plan_resume``)."""
        if not isinstance(model, self.model_class):
            raise TypeError(f"{type(self).__name__} trains a {self.model_class.__name__}, got {type(model).__name__}")
        super().__init__(model=model, args=args, data_collator=collate_batch, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, callbacks=callbacks)
        self.teacher_ref = teacher_ref
        self.run_record = run_record
        self.resume_plan = resume_plan
        self.model_accepts_loss_kwargs = False  # the models' forward takes no num_items_in_batch
        self.meter = LossMeter()
        use_compact_console(self)

    # ------------------------------------------------------------------ model, optimizer, loss
    @property
    def distill_model(self) -> torch.nn.Module:
        """The model being trained (teacher + student), unwrapped from DDP / DeepSpeed."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def scored_model(self) -> torch.nn.Module:
        """What evaluation scores (``lrc.after.evaluate.ce_sum``)."""
        raise NotImplementedError

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW over the explicit trainable list (projections + student gains), as the official code."""
        if self.optimizer is None:
            a = self.args
            self.optimizer = torch.optim.AdamW(self.distill_model.trainable_parameters(), lr=a.learning_rate,
                                               betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon,
                                               weight_decay=a.weight_decay)
        return self.optimizer

    def _model_inputs(self, model, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """What ``compute_loss`` passes to the model (a subclass may add keys)."""
        return inputs

    def compute_loss(self, model, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch=None):
        out: LRCOutput = model(**self._model_inputs(model, inputs))
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
        found = self.meter.first_nonfinite(self.accelerator)
        if found is None:
            return
        step, bad = found
        components = [k for k in bad if not LAYER_KEY_RE.match(k) and k != "loss"] or ["loss"]
        layers = [k for k in bad if LAYER_KEY_RE.match(k)]
        where = f" (per layer: {', '.join(layers[:6])}{' ...' if len(layers) > 6 else ''})" if layers else ""
        raise NonFiniteLossError(
            f"non-finite loss at step {step}: {', '.join(components)} became NaN/inf{where}; training "
            f"stopped and nothing was saved after it. {self._record_nonfinite(step, components)} Try a lower "
            f"--learning-rate, --max_grad_norm, or check the data"
        )

    def _record_nonfinite(self, step: int, components: list[str]) -> str:
        """Note the non-finite step in the run's record at the root (``--resume auto`` then skips the checkpoint whose
        weights produced it: ``lrc.training.resume.suspect_reason``) and say which checkpoints are good."""
        out = Path(self.args.output_dir)
        lineage = (self.run_record or {}).get("lineage")
        on_line = live_checkpoints(out, lineage)
        good = [p for s, p in on_line if s <= step - 2]
        bad = [p for s, p in on_line if s == step - 1]
        if self.args.should_save and self.run_record is not None:
            self.run_record = {**self.run_record, "nonfinite": {"step": step, "components": components}}
            write_json_atomic(out / RUN_RECORD_NAME, self.run_record)
        text = (f"The last checkpoint whose weights gave a finite loss: {good[-1] if good else 'none'}"
                + (f" (resume: --resume {good[-1]} with a lower --learning_rate and --allow_changed learning_rate)"
                   if good else ""))
        if bad:
            text += f"; {bad[0]} holds the weights that produced the non-finite loss (--resume auto skips it)"
        return text + "."

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
            logs.update(self._extra_logs(self.state.global_step))
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

    def _extra_logs(self, step: int) -> dict[str, float]:
        """More values for the training log line at optimizer step ``step`` (none here)."""
        return {}

    # ------------------------------------------------------------------ saving
    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """What a checkpoint holds, by name."""
        raise NotImplementedError

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

    def _write_checkpoint(self, output_dir: str, state_dict: dict[str, Tensor]) -> None:
        """Write ``state_dict`` (the ``_named_trainable`` tensors) and what describes them into ``output_dir``."""
        raise NotImplementedError

    def check_before_save(self) -> None:
        """No checkpoint of weights that gave a non-finite loss (``publish.StagedCheckpoints``)."""
        self._raise_if_nonfinite()

    # ------------------------------------------------------------------ HF private overrides (HF_PRIVATE_OVERRIDES)
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        named = self._named_trainable()
        if state_dict is None or set(state_dict) != {n for n, _ in named}:
            state_dict = {n: p.detach() for n, p in named}  # local copy: no collective on one rank
        self._write_checkpoint(output_dir, state_dict)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial) -> tuple[int, int]:
        """HF's, except after an allowed change of batch size, accumulation or world size: then the data
        position is the checkpoint's position in samples (``lrc.training.resume.data_position``)."""
        epochs, skip = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
                                                    resume_from_checkpoint, trial)
        plan = self.resume_plan
        if resume_from_checkpoint is None or plan is None or not plan.changed & set(BATCH_GEOMETRY) \
                or self.args.ignore_data_skip:
            return epochs, skip
        a = self.args
        pos = data_position(plan.stored, self.state.global_step, a.per_device_train_batch_size,
                            a.gradient_accumulation_steps, a.world_size, len(self.train_dataset))
        if self.is_world_process_zero():
            print(f"--resume: batch geometry changed: continuing at epoch {pos.epochs_trained}, after "
                  f"{pos.micro_batches_to_skip} micro-batches of {a.per_device_train_batch_size} per process "
                  f"({pos.samples_seen_again} samples of the checkpoint's run are seen again)", flush=True)
        return pos.epochs_trained, pos.micro_batches_to_skip

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """HF's, then the learning rate and AdamW betas of this run where ``--allow_changed`` allows them:
        the restored state carries the checkpoint run's values, which would otherwise silently win."""
        super()._load_optimizer_and_scheduler(checkpoint)
        plan = self.resume_plan
        if checkpoint is None or plan is None or not plan.changed & set(SCHEDULE_FLAGS):
            return
        sched = self.lr_scheduler
        if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            raise CheckpointError(f"--allow_changed cannot apply a schedule change to a {type(sched).__name__} "
                                  f"scheduler (only LambdaLR schedules: linear, cosine, constant, ...)")
        a = self.args
        sched.base_lrs = [a.learning_rate for _ in sched.base_lrs]
        for group, lam in zip(self.optimizer.param_groups, sched.lr_lambdas):
            group["initial_lr"] = a.learning_rate
            group["lr"] = a.learning_rate * lam(sched.last_epoch)
            group["betas"] = (a.adam_beta1, a.adam_beta2)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]


class LRCTrainer(DistillTrainer):
    """``DistillTrainer`` for an ``LRCModel``: checkpoints hold the projections and student gains (item 3), the
    student's weights are generated once per optimizer step and may be sharded (item 6), and
    ``lrc.diagnostics`` are logged every ``diagnostics_steps`` steps."""

    model_class: type = LRCModel

    def __init__(self, model: LRCModel, args: TrainingArguments, teacher_ref: TeacherRef,
                 train_dataset=None, eval_dataset=None, callbacks=None, run_record: dict[str, Any] | None = None,
                 resume_plan: ResumePlan | None = None, generation_once_per_step: bool = True,
                 shard_generation: str = "auto", diagnostics_steps: int = 0):
        """As ``DistillTrainer``; ``generation_once_per_step`` / ``shard_generation`` (auto | on | off): when and
        where the student's weights are generated (module docstring, item 6); ``diagnostics_steps``: log
        ``lrc.diagnostics`` every N optimizer steps (0: never)."""
        super().__init__(model, args, teacher_ref, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         callbacks=callbacks, run_record=run_record, resume_plan=resume_plan)
        self.generation_once_per_step = generation_once_per_step
        self.diagnostics_steps = diagnostics_steps
        self._diagnostic_inputs: dict[str, Tensor] | None = None  # the first micro-batch's first 2 sequences
        self.shard_note = setup_sharded_generation(model, shard_generation, self.args.world_size)

    def generation_summary(self) -> str:
        """One line: when and where the student's weights are generated."""
        gas = self.args.gradient_accumulation_steps
        when = ("once per optimizer step" if self.generation_once_per_step else "once per micro-batch") + \
            (f" ({gas} micro-batches each)" if gas > 1 else "")
        return f"student weights: generated {when}; {self.shard_note}"

    @property
    def lrc_model(self) -> LRCModel:
        """The ``LRCModel`` being trained, unwrapped."""
        return self.distill_model

    @property
    def scored_model(self) -> torch.nn.Module:
        """The training-time student (``ce_sum`` generates its weights)."""
        return self.lrc_model

    def _model_inputs(self, model, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if model.training and self.diagnostics_steps and self._diagnostic_inputs is None:
            self._diagnostic_inputs = {k: inputs[k][:2].detach().clone() for k in ("input_ids", "attention_mask")
                                       if inputs.get(k) is not None}
        if model.training and self.generation_once_per_step:  # last micro-batch of the optimizer step or not
            inputs = {**inputs, "window_end": self.accelerator.sync_gradients}
        return inputs

    def _extra_logs(self, step: int) -> dict[str, float]:
        """Every ``diagnostics_steps``: effective ranks of the hidden states, the projections' condition numbers."""
        if not (self.diagnostics_steps and self._diagnostic_inputs is not None and step % self.diagnostics_steps == 0):
            return {}
        from lrc.diagnostics import hidden_state_ranks, projection_condition_summary

        return {**hidden_state_ranks(self.lrc_model, **self._diagnostic_inputs),
                **projection_condition_summary(self.lrc_model)}

    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The projections and student gains, by name."""
        return list(self.lrc_model.projections.named_parameters())

    def _write_checkpoint(self, output_dir: str, state_dict: dict[str, Tensor]) -> None:
        """``lrc_weights.safetensors`` + ``lrc_config.json`` (LRC config and teacher identity)."""
        lrc = self.lrc_model
        save_lrc_checkpoint(output_dir, lrc.projections, lrc.lrc_config, self.teacher_ref, state_dict=state_dict,
                            core_basis=lrc.core_bases_fingerprint())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Restore the projections and gains from ``lrc_weights.safetensors`` (strict: names, shapes, config)."""
        ckpt_dir = Path(resume_from_checkpoint)
        if not (ckpt_dir / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"cannot resume from {str(ckpt_dir)!r}: no {WEIGHTS_NAME} in it")
        ckpt = load_lrc_checkpoint(ckpt_dir / WEIGHTS_NAME)
        lrc = self.lrc_model
        check_resume_compatible(ckpt.lrc.to_dict(), lrc.lrc_config.to_dict(), ckpt_dir)
        why = ckpt.teacher.mismatch(self.teacher_ref) if ckpt.teacher is not None else None
        if why:
            raise CheckpointError(f"cannot resume from {str(ckpt_dir)!r}: it was trained against teacher "
                                  f"{ckpt.teacher.describe()}, not {self.teacher_ref.describe()}: {why}")
        load_into_projections(lrc.projections, ckpt.weights, what=f"checkpoint {ckpt_dir}")
        note = core_basis_note(ckpt.core_basis, lrc.core_bases_fingerprint(), ckpt_dir)
        if note and self.args.process_index == 0:
            logger.warning(note)


# ---------------------------------------------------------------------------------------------- baselines
class BaselineTrainer(DistillTrainer):
    """``DistillTrainer`` for a ``BaselineModel`` (``--model_cls origin | only_kd | prune_kd | tiny_bert``).

    Same optimizer (AdamW over ``trainable_parameters()``: the student and tiny_bert's maps, never the
    teacher), logging, non-finite guard and atomic checkpoints. What differs is what a checkpoint
    holds: the student as a standard HF checkpoint (``config.json``, ``model.safetensors``,
    ``generation_config.json``) plus ``baseline_config.json`` and, for tiny_bert, its maps.
    """

    model_class: type = BaselineModel

    @property
    def baseline_model(self) -> BaselineModel:
        """The ``BaselineModel`` being trained, unwrapped."""
        return self.distill_model

    @property
    def scored_model(self) -> torch.nn.Module:
        """The standard HF student."""
        return self.baseline_model.student

    def _named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``student.``/``maps.``-prefixed trainable tensors."""
        m = self.baseline_model
        return [(f"student.{n}", p) for n, p in m.student.named_parameters()] + \
               [(f"maps.{n}", p) for n, p in m.maps.named_parameters()]

    def __init__(self, *args, student_tokenizer=None, **kwargs):
        """As ``DistillTrainer``; ``student_tokenizer``: saved into every checkpoint (and so into the final output),
        which is then a complete HF model (None: the teacher has none)."""
        super().__init__(*args, **kwargs)
        self.student_tokenizer = student_tokenizer

    def _write_checkpoint(self, output_dir: str, state_dict: dict[str, Tensor]) -> None:
        save_baseline_checkpoint(output_dir, self.baseline_model, state_dict, self.student_tokenizer)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_baseline_checkpoint(resume_from_checkpoint, self.baseline_model)


