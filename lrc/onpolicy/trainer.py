"""``OnPolicyTrainer``: TRL's ``DistillationTrainer`` (on-policy distillation, GKD) under this project's run contract.

TRL does the work: each optimizer step the student samples completions of the step's prompts, the teacher scores
every completion token, and the student minimises the per-token divergence (TRL's ``ChunkedDivergenceFunction``:
both models' hidden states are projected through their heads one [tokens x 4096-vocabulary] tile at a time, so no
[tokens x vocabulary] fp32 logits are ever materialised; ``tests/test_onpolicy.py`` checks its value and gradient
against a full-vocabulary fp64 reference for every divergence offered). What this subclass adds, each because TRL's
stable trainer lacks it:

1. **GKD's lambda** (``on_policy_fraction``): TRL's ``DistillationTrainer`` is on-policy only (its experimental
   ``GKDTrainer`` mixes, but draws with the unseeded global ``random``, materialises full logits and leaves the
   loss at temperature 1 whatever the sampling temperature). Here each optimizer step draws its source from a
   generator seeded by (seed, step): the student's samples, or off-policy sequences (the teacher's samples, or the
   prompts file's completions). Seeded per step, a resumed run draws what the uninterrupted one drew.
2. **Several completions per prompt** (``completions_per_prompt``): TRL's sampler with each prompt repeated k times
   in the generation batch (TRL's own ``RepeatSampler``, as GRPO uses it).
3. **The run contract**: checkpoints staged, manifested and renamed into place (``StagedCheckpoints``), none after a
   non-finite loss. The teacher is an attribute, not a sub-module of the student: it is in no optimizer and no
   checkpoint.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor
from trl import DistillationTrainer
from trl.trainer.utils import RepeatSampler, pad

from lrc.errors import NonFiniteError
from lrc.training.loss_log import LossMeter, use_compact_console
from lrc.training.publish import StagedCheckpoints

SOURCES = ("student", "teacher", "dataset")


def until_eos(completions: Tensor, eos_ids: list[int]) -> list[list[int]]:
    """Each row of ``completions`` (B, T) cut after its first end-of-sequence token (kept), as TRL cuts the student's."""
    eos = set(eos_ids)
    out = []
    for row in completions.tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        out.append(row[:end])
    return out


class OnPolicyTrainer(StagedCheckpoints, DistillationTrainer):
    """``DistillationTrainer`` + GKD's on/off-policy mix, k completions per prompt and the run contract (module
    docstring). ``model``: the student (trainable); ``teacher_model``: frozen, same vocabulary."""

    def __init__(self, *, model, teacher_model, args, train_dataset, processing_class, on_policy_fraction: float = 1.0,
                 off_policy: str = "teacher", completions_per_prompt: int = 1, run_record: dict[str, Any] | None = None,
                 callbacks=None):
        if off_policy not in SOURCES[1:]:
            raise ValueError(f"off_policy must be teacher or dataset, got {off_policy!r}")
        self.on_policy_fraction = on_policy_fraction
        self.off_policy = off_policy
        self.completions_per_prompt = completions_per_prompt
        self._source = "student"
        self._dataset_completions: list[list[int]] | None = None
        self.meter = LossMeter()  # the non-finite guard's device-side record (as lrc train's trainers keep it)
        super().__init__(model=model, teacher_model=teacher_model, args=args, train_dataset=train_dataset,
                         processing_class=processing_class, callbacks=callbacks)
        self.run_record = run_record
        self.teacher_model.requires_grad_(False)
        use_compact_console(self)

    # ------------------------------------------------------------------ where the step's sequences come from
    def sequence_source(self, step: int) -> str:
        """The source of optimizer step ``step``'s sequences: student (on-policy) with probability
        ``on_policy_fraction``, else ``off_policy``; the same on every process and in a resumed run."""
        if self.on_policy_fraction >= 1.0:
            return "student"
        u = random.Random(f"{self.args.seed}:{step}").random()
        return "student" if u < self.on_policy_fraction else self.off_policy

    def _get_train_sampler(self, dataset=None):
        """TRL's sampler (one generation batch repeated over the accumulation steps), each prompt k times in it."""
        dataset = self.train_dataset if dataset is None else dataset
        a, k = self.args, self.completions_per_prompt
        generation_batch = a.per_device_train_batch_size * self.accelerator.num_processes * a.gradient_accumulation_steps
        return RepeatSampler(data_source=dataset, mini_repeat_count=k, batch_size=generation_batch // k,
                             repeat_count=a.gradient_accumulation_steps, shuffle=self.shuffle_dataset, seed=a.seed)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        training = self.model.training
        self._source = self.sequence_source(self.state.global_step) if training else "student"
        if training:  # the mean over processes: 0 or 1, since every process draws the same source
            on = torch.tensor([float(self._source == "student")], device=self.accelerator.device)
            self._metrics["train"]["on_policy"].append(self.accelerator.gather(on).mean().item())
        if self._source == "dataset":
            self._dataset_completions = [self._completion_ids(x["completion"]) for x in inputs]
        return super()._generate_and_score_completions(inputs)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        if self._source == "student":
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, has_tool_images)
        if self._source == "dataset":
            return self._dataset_completions
        return self._teacher_completions(prompt_ids)

    def _completion_ids(self, text: str) -> list[int]:
        """A dataset completion as token ids, closed by the end-of-sequence token, cut at the completion length."""
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return (ids + [self.eos_token_ids[0]])[: self.max_completion_length]

    @torch.no_grad()
    def _teacher_completions(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """The teacher's samples of the prompts, with the student's generation settings (sequence-level KD)."""
        device = self.accelerator.device
        ids = pad([torch.tensor(x) for x in prompt_ids], padding_value=self._tokenizer.pad_token_id,
                  padding_side="left").to(device)
        mask = pad([torch.ones(len(x), dtype=torch.long) for x in prompt_ids], padding_value=0,
                   padding_side="left").to(device)
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        seq = teacher.generate(input_ids=ids, attention_mask=mask, generation_config=self.generation_config)
        return until_eos(seq[:, ids.size(1):], self.eos_token_ids)

    # ------------------------------------------------------------------ the non-finite guard
    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.meter.add_values(["loss"], [loss.detach()], self.state.global_step + 1)  # no host sync
        return loss

    def check_before_save(self) -> None:
        """One sync: refuse to save (and stop) when any micro-step so far had a non-finite loss."""
        found = self.meter.first_nonfinite(self.accelerator)
        if found is not None:
            raise NonFiniteError(f"non-finite loss at step {found[0]}: the divergence became NaN/inf; training "
                                 f"stopped and nothing was saved after it. Try a lower --learning_rate or "
                                 f"--max_grad_norm, or resume from the last checkpoint")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if "loss" in logs:
            self.check_before_save()
