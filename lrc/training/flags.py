"""The training command's flags, group by group: dataclasses whose fields are the flags and whose field docstrings are
``lrc train --help`` (``lrc.cli.options``). Each group checks its own values (``validate``); a group says which of
its flags a resume must keep (``_resume_checked``, beside the fields). The method's flags are ``LRCConfig``'s fields
(``MethodFlags``, made from it). ``lrc.training.config.TrainConfig`` nests these groups.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from lrc.cli.options import OptionError, field_docs, help_escape, options
from lrc.config import LRCConfig
from lrc.config import flag_name as method_flag
from lrc.console import warn

FlagError = OptionError
"""A command-line flag is unknown, malformed or contradicts another (one-line message)."""

METHOD_ALIASES = {"distill": "lrc"}
"""Other spellings of ``--model_cls`` values (the official ``distill`` is LRC; registry: ``lrc.training.methods``)."""


def canonical_method_name(name: str) -> str:
    """The registered name of a ``--model_cls`` value (``distill`` -> ``lrc``); other names unchanged."""
    return METHOD_ALIASES.get(name, name)


RESUME_KINDS = ("data", "schedule", "optimisation", "batch geometry", "data order and init", "length")
"""Why a resume checks a flag (the values of ``_resume_checked``): ``lrc.training.resume`` re-positions the data after
a "batch geometry" change and replaces the restored schedule after a "schedule" change."""


def resume_checked(group: type) -> dict[str, str]:
    """The flags of ``group`` a resume compares, with why (its ``_resume_checked``, beside the fields: one of
    ``RESUME_KINDS``), in field order."""
    checked = getattr(group, "_resume_checked", {})
    odd = {k: v for k, v in checked.items() if v not in RESUME_KINDS}
    if odd:
        raise TypeError(f"{group.__name__}._resume_checked: {odd} is not one of {RESUME_KINDS}")
    return {f.name: checked[f.name] for f in dataclasses.fields(group) if f.name in checked}


# ---------------------------------------------------------------------------------------------- the groups
@options(group="what to train, on what, where")
class RunTarget:
    """The teacher, the data, the outputs and the kind of student."""

    raw_model_name: str | None = None
    """required: the teacher, an HF model directory / hub id or a .gguf file [official default:
    ../models/Meta-Llama-3-8B-Instruct]"""
    dataset_name: str | None = None
    """required: the training data: packed jsonl {"input_ids": [...]} (the official format), text jsonl
    {"text": ...}, .txt/.txt.xz, comma-separated text files, or a token-shard directory written by `lrc prepare`
    [official default: ../datasets/squad_v2]"""
    output_dir: str | None = None
    """required: EXACTLY where outputs go: checkpoint-N/ and the final weights at its root [official: ../ckpts,
    then a run dir {tags}/{MMDDHH}/ below it]"""
    model_cls: str = "lrc"
    """the method (lrc.training.methods): lrc (Low-Rank Clone; the official spelling distill is the same) | origin
    (random-init student, CE only) | only_kd (+ KL) | prune_kd (CE + KL from the width-pruned teacher,
    Minitron-style; --calib_data, --calib_tokens) | tiny_bert (+ KL + hidden-state and attention-map MSE); the
    baselines train the LRC student's architecture and save a standard HF checkpoint"""
    tiny_bert_attn_loss: bool = True
    """tiny_bert: add the attention-map MSE (official; forces eager attention)"""
    data_max_len: int = 1024
    """sequence length S (packed lines are cut to it, shorter ones padded + masked)"""
    text_field: str = "text"
    """field holding the text in a text jsonl"""
    tokenizer: str | None = None
    """tokenizer for text data, when the teacher has none (default: the teacher's)"""
    eval_dataset: str | None = None
    """held-out data (same formats): logs eval_ce / eval_ppl of the student"""
    eval_steps: int | None = None
    """evaluate every N steps (default: --save_steps)"""
    eval_max_sequences: int = 0
    """evaluate on the first N held-out sequences only (0: all)"""
    calib_data: str | None = None
    """--proj_init activation / --model_cls prune_kd: calibration text or token data (same formats as
    --dataset_name; default: the training data)"""
    calib_tokens: int = 4096
    """--proj_init activation / --model_cls prune_kd: calibration tokens (whole sequences, from the start)"""

    _resume_checked = {"dataset_name": "data", "data_max_len": "data", "text_field": "data"}

    def __post_init__(self) -> None:
        self.model_cls = canonical_method_name(self.model_cls)  # --model_cls distill is lrc

    def validate(self) -> None:
        from lrc.errors import DataError

        if self.data_max_len is None or self.data_max_len < 2:
            raise FlagError(f"--data_max_len must be at least 2 (one token to read, one to predict), got "
                            f"{self.data_max_len}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise FlagError(f"--eval_steps must be a positive integer, got {self.eval_steps}")
        if self.eval_steps is not None and not self.eval_dataset:
            raise FlagError("--eval_steps needs --eval_dataset")
        if self.eval_max_sequences < 0:
            raise FlagError(f"--eval_max_sequences must be >= 0, got {self.eval_max_sequences}")
        if self.calib_tokens is None or self.calib_tokens < 1:
            raise FlagError(f"--calib_tokens must be a positive integer, got {self.calib_tokens!r}")
        if self.calib_data and "," not in self.calib_data and not Path(self.calib_data).exists():
            raise FlagError(f"--calib_data {self.calib_data!r}: no such file or directory")
        for k in ("dataset_name", "eval_dataset"):
            v = getattr(self, k)
            if v and "," not in v and not Path(v).exists():
                raise DataError(f"--{k} {v!r}: no such file")



@options(group="optimisation")
class Optimisation:
    """The optimizer, the schedule, the batch and the compute."""

    learning_rate: float = 1e-4
    """peak learning rate (AdamW, weight decay 0, eps 1e-8)"""
    adam_beta2: float = 0.999
    """AdamW beta2 (beta1 0.9)"""
    warmup_ratio: float = 0.005
    """linear warmup, fraction of the total steps (ceil)"""
    warmup_steps: int | None = None
    """linear warmup in optimizer steps (overrides --warmup_ratio; the schedule then does not depend on
    --max_steps for constant schedules)"""
    lr_scheduler: str = "linear"
    """HF scheduler: linear | cosine | constant | constant_with_warmup | warmup_stable_decay (decay over the last
    10% of steps) | ..."""
    max_grad_norm: float = 1.0
    """gradient clipping (0: off); under DeepSpeed leave the yaml's gradient_clipping at auto"""
    batch_size: int = 4
    """micro-batch per process"""
    gradient_accumulation_steps: int = 1
    """micro-batches per optimizer step"""
    max_steps: int = -1
    """optimizer steps (-1: --num_epochs over the data)"""
    num_epochs: int = 1
    """epochs when --max_steps is -1"""
    seed: int = 42
    """seed of the projection init, data order and the Trainer [official: init under 429, then the Trainer
    reseeds with 42]"""
    bf16: str = dataclasses.field(default="auto", metadata={"nargs": "?", "const": "true"})
    """auto | true | false: bf16 teacher and compute, fp32 master projections (auto: on with CUDA) [official:
    always bf16]"""
    attn_implementation: str | None = None
    """teacher/student attention kernel (sdpa, eager, flash_attention_2; default: transformers') [official:
    flash_attention_2]"""
    gradient_checkpointing: bool = False
    """recompute each student layer (and its clone terms) in backward: less memory, ~1 more student forward"""
    generation_once_per_step: bool = True
    """generate the student's weights once per optimizer step under gradient accumulation (exact; W_S and its
    gradient then live across the micro-batches); false: once per micro-batch, for debugging"""
    shard_generation: str = "auto"
    """auto | on | off: each data-parallel rank of a node generates its share of the student's weights, all-gathered
    after (exact; auto: on with 2+ GPU processes per node); docs/TRAINING.md, Where student weights are generated"""
    shard_teacher: bool = False
    """shard the frozen teacher over the processes (torch FSDP2), one decoder layer gathered at a time: teachers
    larger than one GPU (safetensors, 2+ processes, lrc); docs/TRAINING.md, Teachers larger than one GPU"""
    num_workers: int = 0
    """DataLoader workers [official: 8]"""

    _resume_checked = {"learning_rate": "schedule", "lr_scheduler": "schedule", "warmup_ratio": "schedule",
                       "warmup_steps": "schedule", "adam_beta2": "schedule", "max_grad_norm": "optimisation",
                       "bf16": "optimisation", "batch_size": "batch geometry",
                       "gradient_accumulation_steps": "batch geometry", "seed": "data order and init",
                       "num_epochs": "length"}  # compared when --max_steps is -1

    def __post_init__(self) -> None:
        # One spelling for --bf16: auto | true | false (a bool from Python callers or YAML is accepted).
        if isinstance(self.bf16, bool):
            self.bf16 = "true" if self.bf16 else "false"
        v = str(self.bf16).lower()
        self.bf16 = {"1": "true", "yes": "true", "0": "false", "no": "false"}.get(v, v)

    def validate(self) -> None:
        from transformers.trainer_utils import SchedulerType

        if self.bf16 not in ("auto", "true", "false"):
            raise FlagError(f"--bf16 expects auto, true or false, got {self.bf16!r}")
        for k in ("batch_size", "gradient_accumulation_steps", "num_epochs"):
            if getattr(self, k) is None or getattr(self, k) < 1:
                raise FlagError(f"--{k} must be a positive integer, got {getattr(self, k)!r}")
        if self.shard_generation not in ("auto", "on", "off"):
            raise FlagError(f"--shard_generation must be auto, on or off, got {self.shard_generation!r}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise FlagError(f"--max_steps must be > 0, or -1 for --num_epochs passes, got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise FlagError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise FlagError(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.learning_rate > 0:
            raise FlagError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.adam_beta2 < 1:
            raise FlagError(f"--adam_beta2 must be in [0, 1), got {self.adam_beta2}")
        if self.max_grad_norm < 0:
            raise FlagError(f"--max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.num_workers < 0:
            raise FlagError(f"--num_workers must be >= 0, got {self.num_workers}")
        names = [s.value for s in SchedulerType]
        if self.lr_scheduler not in names:
            raise FlagError(f"--lr_scheduler {self.lr_scheduler!r} is not an HF scheduler; one of {names}")
        if self.lr_scheduler == "warmup_stable_decay" and self.max_steps < 1:
            raise FlagError("--lr_scheduler warmup_stable_decay needs --max_steps (its decay spans the last 10% of them)")

    def use_bf16(self, cuda: bool, launcher_mixed_precision: str = "no") -> bool:
        """Whether the run computes in bf16: ``--bf16`` true / false, or with auto the launcher's mixed_precision
        (``accelerate launch``'s config) when it sets one, else whether CUDA is there."""
        if self.bf16 != "auto":
            return self.bf16 == "true"
        return launcher_mixed_precision == "bf16" if launcher_mixed_precision != "no" else cuda


@options(group="checkpoints, resuming and logging")
class Checkpointing:
    """Where the run saves, how it resumes, what it logs."""

    log_steps: int = 100
    """log every N optimizer steps (loss, ce, kl, clone, each term, L{i}-{term})"""
    diagnostics_steps: int = 100
    """LRC: at the logging steps that are multiples of N, also log the effective rank of student and teacher
    hidden states (2 sequences) and the projections' condition numbers (0: never); docs/TRAINING.md, Logging"""
    save_steps: int = 20000
    """checkpoint every N steps"""
    save_total_limit: int = 10
    """keep the N newest checkpoint-N directories (0: all)"""
    resume: str | None = None
    """resume from a checkpoint-N directory, or auto = the newest complete one in --output_dir (an empty or new
    --output_dir: a fresh start; a finished run: nothing to do)"""
    allow_changed: str = ""
    """on resume, apply these changed flags instead of refusing them, e.g. learning_rate,batch_size (the ones
    compared: docs/TRAINING.md, What a run guarantees)"""
    resume_checkpoint: str | None = None
    """alias of --resume (official name)"""
    load_model_weight_path: str | None = None
    """warm start: load projections (ours or official model.safetensors), fresh optimizer"""
    init_from: str | None = None
    """start a new run (step 0, fresh optimizer) from an earlier LRC checkpoint of the same teacher and variant:
    its projections and gains, new --mlp_train Deltas at 0 (the two-phase recipe: plain LRC, then dense or core);
    with --model_cls only_kd / origin / tiny_bert, a converted student (lrc convert's output) whose every weight then
    trains; ignored when resuming"""
    overwrite_output_dir: bool = False
    """start over in an --output_dir that holds a previous run (its checkpoints and final weights are deleted; never
    a directory holding a model that no run wrote, e.g. the teacher's)"""
    report_to: str = "none"
    """none | wandb | tensorboard | wandb,tensorboard (wandb without credentials: offline mode) [official: wandb]"""
    project_name: str = "expt-small-llm"
    """wandb project"""
    extra_tags: str = "ordinary"
    """wandb tags and run name, comma-separated (never part of the output path)"""

    def __post_init__(self) -> None:
        if self.resume_checkpoint is not None:  # the official name of --resume
            if self.resume not in (None, self.resume_checkpoint):
                raise FlagError(f"--resume_checkpoint and --resume disagree ({self.resume_checkpoint!r} vs "
                                f"{self.resume!r})")
            self.resume, self.resume_checkpoint = self.resume_checkpoint, None
        if isinstance(self.report_to, (list, tuple)):  # records of earlier versions hold a list
            self.report_to = ",".join(self.report_to) or "none"

    def validate(self) -> None:
        for k in ("log_steps", "save_steps"):
            if getattr(self, k) is None or getattr(self, k) < 1:
                raise FlagError(f"--{k} must be a positive integer, got {getattr(self, k)!r}")
        if self.save_total_limit < 0:
            raise FlagError(f"--save_total_limit must be >= 0, got {self.save_total_limit}")
        if self.diagnostics_steps is None or self.diagnostics_steps < 0:
            raise FlagError(f"--diagnostics_steps must be 0 (never) or a positive integer, got {self.diagnostics_steps!r}")
        unknown = sorted(self.allowed_changes() - set(CHECKED_FLAGS))
        if unknown:
            raise FlagError(f"--allow_changed {','.join(unknown)}: not a flag a resume compares; those are "
                            f"{', '.join(CHECKED_FLAGS)}")
        reports = [r.strip() for r in self.report_to.split(",") if r.strip()]
        bad = [r for r in reports if r not in ("none", "wandb", "tensorboard")]
        if bad or not reports or ("none" in reports and len(reports) > 1):
            raise FlagError(f"--report_to must be none, wandb, tensorboard or wandb,tensorboard; got {self.report_to!r}")
        if self.init_from:
            if self.load_model_weight_path:
                raise FlagError("--init_from and --load_model_weight_path both choose the starting weights; give one")
            if not Path(self.init_from).exists():
                from lrc.checkpoint import CheckpointError

                raise CheckpointError(f"--init_from {self.init_from!r}: no such file or directory")

    def allowed_changes(self) -> set[str]:
        """The flags ``--allow_changed`` names."""
        return {a.strip() for a in self.allow_changed.split(",") if a.strip()}

    def reporters(self) -> list[str]:
        """``--report_to`` as HF's list (empty for none)."""
        return [r.strip() for r in self.report_to.split(",") if r.strip() and r.strip() != "none"]

    def tags(self) -> list[str]:
        return [t for t in self.extra_tags.split(",") if t]


_BARE_TRUE = {"nargs": "?", "const": True}


@options(group="official flags without an effect here (accepted with a warning, or refused with the reason)")
class OfficialOnly:
    """Flags of the official command line that this implementation does not act on."""

    use_accelerate: bool | None = dataclasses.field(default=None, metadata=_BARE_TRUE)
    """no effect: the script works the same under `accelerate launch` and python"""
    gpus: int | None = None
    """no effect: processes/devices come from `accelerate launch`"""
    check_data_cls_loss: bool | None = dataclasses.field(default=None, metadata=_BARE_TRUE)
    """per-data-class CE logging: not implemented (true is refused)"""
    use_std_like_attn: bool | None = dataclasses.field(default=None, metadata=_BARE_TRUE)
    """dead in the official code (raises 'Low Performance'): true is refused"""
    tie_n: int | None = None
    """dead in the official code (>1 raises 'low perf'): >1 is refused"""
    student_attn_from_scratch: bool | None = dataclasses.field(default=None, metadata=_BARE_TRUE)
    """not implemented (the official variant never trains its attention: a naming bug freezes it): true is refused"""
    use_additional_align: bool | None = dataclasses.field(default=None, metadata=_BARE_TRUE)
    """not implemented (unconvertible in the official code): true is refused"""

    _why = {
        "use_accelerate": (lambda v: False, "it has no effect: device placement is always left to accelerate "
                                            "(use `accelerate launch` for several processes)"),
        "gpus": (lambda v: False, "it has no effect: the number of processes comes from `accelerate launch`"),
        "check_data_cls_loss": (lambda v: bool(v), "per-data-class CE logging (data_cls) is not implemented yet"),
        "use_std_like_attn": (lambda v: bool(v), "the official code raises ValueError('Low Performance') for it"),
        "tie_n": (lambda v: v is not None and v > 1, "the official code raises ValueError('low perf') for tie_n > 1"),
        "student_attn_from_scratch": (lambda v: bool(v), "not implemented yet (in the official code its attention "
                                                         "weights are frozen by a naming bug and never train)"),
        "use_additional_align": (lambda v: bool(v), "not implemented yet (the official converter cannot handle it)"),
    }

    def validate(self) -> None:
        """Refuse the values that would change the method; warn for the others that were given."""
        for name, (refuse, why) in self._why.items():
            v = getattr(self, name)
            if v is None:
                continue
            if refuse(v):
                raise FlagError(f"--{name}={v!r} is not supported: {why}")
            warn(f"--{name} is accepted for compatibility with the official command, but {why}")


# ---------------------------------------------------------------------------------------------- the method's flags
_TUPLE_FIELDS = ("del_layers", "ban_layers", "ban_losses")
_FLAG_DEFAULTS = {"target_hidden_size": None, "del_layers": "", "ban_layers": "", "ban_losses": "no"}
"""Where a flag's default is not its field's: required (checked after a recipe / --demo), or the comma-list
spelling of an empty tuple (the official placeholder "no" for the bans)."""


def _method_flags_class() -> type:
    """The method's flags as a dataclass made from ``LRCConfig``: its field docs are the help, its defaults the
    flags' defaults; tuple fields are comma-separated strings on the command line, and a Literal field a string
    that ``LRCConfig.validate`` checks (its message names the field and the choices)."""
    hints = typing.get_type_hints(LRCConfig)
    docs = field_docs(LRCConfig)
    made = []
    for f in dataclasses.fields(LRCConfig):
        kind = hints[f.name]
        if typing.get_origin(kind) in (tuple, typing.Literal):  # a comma list; a name LRCConfig.validate checks
            kind = str
        default = _FLAG_DEFAULTS.get(f.name, f.default)
        if default is None:
            kind = kind | None
        help_ = help_escape(("required: " if f.name == "target_hidden_size" else "") + docs[f.name])
        made.append((method_flag(f.name), kind, dataclasses.field(default=default, metadata={"help": help_})))
    cls = dataclasses.make_dataclass("MethodFlags", made)
    cls._argument_group_name = "the method (LRCConfig; defaults: the README LRC-1.5B recipe)"
    return cls


MethodFlags = _method_flags_class()
"""``lrc train``'s flags for ``LRCConfig``'s fields (made from it: one source of names, defaults and docs)."""


def method_from_flags(values: dict[str, Any]) -> LRCConfig:
    """``LRCConfig`` from method flag values ({flag: value}; a flag not given takes its ``MethodFlags`` default); its
    own checks run (one line naming the field)."""
    values = {f.name: f.default for f in dataclasses.fields(MethodFlags)} | values
    return LRCConfig(**{f.name: values[method_flag(f.name)] for f in dataclasses.fields(LRCConfig)})


def method_to_flags(method: LRCConfig) -> dict[str, Any]:
    """The inverse of ``method_from_flags``: each field in its command-line spelling (tuples comma-joined)."""
    out = {}
    for f in dataclasses.fields(LRCConfig):
        v = getattr(method, f.name)
        if f.name in _TUPLE_FIELDS:
            v = ",".join(map(str, v)) if v else _FLAG_DEFAULTS[f.name]
        out[method_flag(f.name)] = v
    return out


CHECKED_FLAGS: dict[str, str] = {**resume_checked(Optimisation), "world_size": "batch geometry",
                                 **resume_checked(RunTarget)}
"""Flags a resumed run must keep unless ``--allow_changed`` names them (``lrc.training.resume``), with why; plus the world
size, which is the launcher's."""
