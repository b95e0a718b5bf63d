"""``lrc onpolicy``'s flags: one typed dataclass, each field's docstring its ``--help`` text (``lrc.cli.options``).

The defaults are those of TRL's ``DistillationConfig`` where it has the same setting (reverse KL, temperature 1,
learning rate 1e-6, no top-k / top-p), so a TRL user meets no surprise; ``--on_policy_fraction`` (GKD's lambda),
``--off_policy``, ``--completions_per_prompt`` and the run-directory flags are this project's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lrc.cli.options import OptionError, options

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
OFF_POLICY_SOURCES = ("teacher", "dataset")
CHAT_TEMPLATE_MODES = ("auto", "off")

CHECKED = ("student", "teacher", "prompts", "chat_template", "on_policy_fraction", "off_policy", "divergence",
           "jsd_beta", "temperature", "max_new_tokens", "completions_per_prompt", "batch_size",
           "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "warmup_ratio", "max_grad_norm", "seed",
           "gradient_checkpointing")
"""Flags a resume must match (strict: a run continues only with the settings it was trained with); the student and
teacher are compared by their weights' fingerprints, the prompts by their content."""


@options
class OnPolicyOptions:
    """The whole of an on-policy distillation run (``lrc onpolicy --help``)."""

    # --------------------------------------------------------------------------------------------- what to train
    student: str = ""
    """the model to train: a standard HF model directory (an `lrc convert` output, or any causal LM with the
    teacher's vocabulary), safetensors weights"""
    teacher: str = ""
    """the frozen teacher: an HF model directory or a .gguf file; it must have the student's vocabulary"""
    prompts: str = ""
    """jsonl, one prompt per line: {"messages": [{"role": "user", "content": ...}, ...]} (chat) or {"prompt": "text"};
    an optional "completion" (text) is what --off_policy dataset trains on"""
    output_dir: str = ""
    """the run directory: checkpoint-N/ every --save_steps, and at its root the trained student as a standard HF model
    directory"""
    tokenizer: str | None = None
    """the tokenizer (default: the student's directory, else the teacher's)"""
    chat_template: str = "auto"
    """auto: chat prompts are rendered with the tokenizer's chat template, and plain prompts too (as one user turn)
    when it has one; off: plain prompts are continued as raw text (chat prompts are refused)"""

    # --------------------------------------------------------------------------------------------- the method (GKD)
    on_policy_fraction: float = 1.0
    """GKD's lambda: the share of optimizer steps trained on the student's own samples; the others train on
    --off_policy sequences (the draw is seeded per step)"""
    off_policy: str = "teacher"
    """the sequences of the off-policy steps: teacher (completions the teacher samples: sequence-level KD) or dataset
    (the prompts file's "completion" fields: supervised KD)"""
    divergence: str = "reverse_kl"
    """the per-token divergence between the student's and the teacher's next-token distributions on every completion
    token: reverse_kl KL(student || teacher), forward_kl KL(teacher || student), or jsd (generalised JSD, mixture
    weight --jsd_beta)"""
    jsd_beta: float = 0.5
    """with --divergence jsd: the generalised JSD's beta in (0, 1), the teacher's weight in the mixture
    (1 - beta) p_student + beta p_teacher (0.5: the symmetric JSD)"""
    temperature: float = 1.0
    """the sampling temperature of the completions, and the temperature of both distributions in the divergence"""
    max_new_tokens: int = 128
    """tokens sampled per completion at most (a completion also ends at an end-of-sequence token)"""
    completions_per_prompt: int = 1
    """completions sampled per prompt in each step (the generation batch, --batch_size x processes x
    --gradient_accumulation_steps, must be a multiple of it)"""

    # --------------------------------------------------------------------------------------------- optimisation
    batch_size: int = 4
    """sequences (prompt + completion) per process per micro-step"""
    gradient_accumulation_steps: int = 1
    """micro-steps per optimizer step (completions are generated once per optimizer step, for all of them)"""
    learning_rate: float = 1e-6
    """AdamW's peak learning rate (TRL's default; small students often take 1e-5)"""
    lr_scheduler: str = "linear"
    """a transformers schedule name: linear, cosine, constant, constant_with_warmup, ..."""
    warmup_ratio: float = 0.0
    """share of --max_steps spent warming the learning rate up"""
    max_grad_norm: float = 1.0
    """gradient clipping (0: off)"""
    max_steps: int = 100
    """optimizer steps"""
    seed: int = 42
    """seeds the data order, the sampling and the per-step on/off-policy draw (each process samples differently)"""
    bf16: str = "auto"
    """auto (bf16 autocast on a GPU, fp32 on a CPU), true or false"""
    gradient_checkpointing: bool = False
    """recompute the student's activations in the backward (memory for time)"""

    # --------------------------------------------------------------------------------------------- the run directory
    save_steps: int = 50
    """a checkpoint every N optimizer steps (and at the end, and on SIGTERM)"""
    save_total_limit: int = 2
    """checkpoints kept (the newest ones of the run's live line)"""
    log_steps: int = 10
    """a log line every N optimizer steps"""
    resume: str | None = None
    """auto (the newest complete checkpoint in --output_dir; a fresh start when there is none) or a checkpoint-N
    path"""
    overwrite_output_dir: bool = False
    """delete a previous on-policy run in --output_dir and start over (never an lrc train run, never a model no run
    wrote)"""
    report_to: str = "none"
    """none, wandb or tensorboard (comma-separated)"""

    def check(self) -> None:
        """One-line ``OptionError`` for a value that cannot work (before anything is loaded or written)."""
        for name in ("student", "teacher", "prompts", "output_dir"):
            if not getattr(self, name):
                raise OptionError(f"missing required flag --{name} (lrc onpolicy --help)")
        _one_of("divergence", self.divergence, DIVERGENCES)
        _one_of("off_policy", self.off_policy, OFF_POLICY_SOURCES)
        _one_of("chat_template", self.chat_template, CHAT_TEMPLATE_MODES)
        _one_of("bf16", self.bf16, ("auto", "true", "false"))
        if not 0.0 <= self.on_policy_fraction <= 1.0:
            raise OptionError(f"--on_policy_fraction {self.on_policy_fraction}: expected a share in [0, 1]")
        if self.divergence == "jsd" and not 0.0 < self.jsd_beta < 1.0:
            raise OptionError(f"--jsd_beta {self.jsd_beta}: expected a value in (0, 1) (0 is --divergence forward_kl, "
                              f"1 is reverse_kl)")
        if self.temperature <= 0:
            raise OptionError(f"--temperature {self.temperature}: expected > 0")
        for name in ("max_new_tokens", "completions_per_prompt", "batch_size", "gradient_accumulation_steps",
                     "max_steps", "save_steps", "log_steps"):
            if getattr(self, name) < 1:
                raise OptionError(f"--{name} {getattr(self, name)}: expected a positive integer")
        if self.resume not in (None, "", "auto") and self.overwrite_output_dir:
            raise OptionError("--resume PATH and --overwrite_output_dir contradict each other: pick one")

    def trl_beta(self) -> float:
        """TRL's ``beta`` for ``--divergence``: 0 is the forward KL, 1 the reverse KL, in between the generalised
        JSD with that mixture weight."""
        return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(self.divergence, self.jsd_beta)

    def to_flags(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> OnPolicyOptions:
        """The options of the run a record describes (``lrc.onpolicy.record``); names this version lacks are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record["flags"].items() if k in names})


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"--{name} {value!r}: expected one of {', '.join(allowed)}")
