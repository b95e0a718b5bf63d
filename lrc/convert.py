"""Conversion: fold the projections into a standalone, standard HF student checkpoint.

``convert_checkpoint`` reads a self-describing LRC checkpoint (or an official-code one), rebuilds the
LRC model on the teacher in fp32, generates the student weights with the *same* function training
uses (``lrc.generate.generate_student_weights``), loads them into the student's standard HF class
and saves it in the teacher's dtype, with the teacher's tokenizer and generation config.

The output is built in a temporary sibling directory and renamed at the end: on any error nothing
is left at ``save_path``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from .checkpoint import (CheckpointError, current_umask, infer_official_variant, load_into_projections, load_lrc_checkpoint,
                         official_to_ours)
from .config import LRCConfig
from .families import check_family
from .model import LRCModel
from .teacher import load_teacher, load_teacher_config, load_tokenizer, teacher_fingerprint

log = logging.getLogger(__name__)

# Flags that may be given to the converter; each must agree with the stored config.
CHECKED_FLAGS = ("target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj",
                 "target_rms_norm_eps", "del_layers")


class ConversionError(ValueError):
    """Conversion cannot proceed; the message says what and where."""


def _normalise(name: str, v: Any) -> Any:
    if name in ("use_all_attn", "use_in_out_mlp", "tie_word_emb_proj"):
        return bool(v)
    if name == "del_layers":
        return LRCConfig(target_hidden_size=1, del_layers=v).del_layers
    if name == "target_rms_norm_eps":
        return float(v)
    return v


def resolve_config(ckpt, flags: dict[str, Any]) -> LRCConfig:
    """The LRC config of a checkpoint, with user flags checked (ours) or applied (official)."""
    flags = {k: _normalise(k, v) for k, v in flags.items() if v is not None}
    if not ckpt.official:
        stored = ckpt.lrc.to_dict()
        for k, v in flags.items():
            have = _normalise(k, stored[k])
            if have != v:
                raise ConversionError(
                    f"--{k.replace('_', '-')}={v!r} contradicts the checkpoint's stored {k}={have!r} "
                    f"({ckpt.path}); drop the flag, the checkpoint describes itself"
                )
        return ckpt.lrc
    inferred = infer_official_variant(ckpt.weights)
    for k in ("target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj"):
        if k in flags and flags[k] != inferred[k]:
            raise ConversionError(
                f"--{k.replace('_', '-')}={flags[k]!r} contradicts the official checkpoint's tensors, "
                f"which imply {k}={inferred[k]!r} ({ckpt.path})"
            )
    kw = {k: inferred[k] for k in ("target_hidden_size", "use_all_attn", "use_in_out_mlp", "tie_word_emb_proj")}
    for k in ("target_rms_norm_eps", "del_layers"):
        if k in flags:
            kw[k] = flags[k]
    return LRCConfig(**kw)


def build_student(ckpt_path: str, raw_model_name: str | None = None, flags: dict[str, Any] | None = None):
    """Return (student model in fp32, teacher path, LRC config, LRC model) for a checkpoint.

    The LRC model's ``student_logits`` is the training-time student; the returned HF model is the
    folded one (used by tests to prove equality).
    """
    ckpt = load_lrc_checkpoint(ckpt_path)
    lrc = resolve_config(ckpt, flags or {})
    teacher_path = raw_model_name or (ckpt.teacher.name_or_path if ckpt.teacher else None)
    if not teacher_path:
        raise ConversionError(f"{ckpt.path} is an official-code checkpoint: pass --raw-model-name TEACHER")
    try:
        tcfg = load_teacher_config(teacher_path)
    except OSError as e:
        raise ConversionError(f"cannot load the teacher config from {teacher_path!r}: {e}") from None
    check_family(tcfg)
    if ckpt.teacher is not None and ckpt.teacher.config_hash:
        h = teacher_fingerprint(tcfg)
        if h != ckpt.teacher.config_hash:
            raise ConversionError(
                f"teacher mismatch: {ckpt.path} was trained against a teacher with config hash "
                f"{ckpt.teacher.config_hash} ({ckpt.teacher.name_or_path!r}), but {teacher_path!r} has {h}"
            )
    lrc.validate(tcfg)
    teacher = load_teacher(teacher_path, dtype=torch.float32)
    model = LRCModel(teacher, lrc)
    weights = ckpt.weights
    if ckpt.official:
        weights = official_to_ours(weights, lrc, model.kept_layers)
    load_into_projections(model.projections, weights, f"checkpoint {str(ckpt.path)!r}")
    student = fold(model)
    return student, teacher_path, lrc, model


@torch.no_grad()
def fold(model: LRCModel) -> torch.nn.Module:
    """The student as a standalone HF model (fp32): generated weights loaded into its real class."""
    weights = model.student_weights(dtype=torch.float32)
    student = AutoModelForCausalLM.from_config(model.student_config, dtype=torch.float32)
    params = dict(student.named_parameters())
    if set(params) != set(weights):
        raise ConversionError(
            f"generated weights do not match the student class: missing {sorted(set(params) - set(weights))}, "
            f"unexpected {sorted(set(weights) - set(params))}"
        )
    for k, p in params.items():
        p.copy_(weights[k])
    return student.eval()


def _teacher_dtype(teacher_path: str) -> torch.dtype:
    cfg = load_teacher_config(teacher_path)
    dt = getattr(cfg, "dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) else torch.float32


def convert_checkpoint(ckpt_path: str, save_path: str, raw_model_name: str | None = None,
                       flags: dict[str, Any] | None = None, dtype: str | None = None,
                       overwrite: bool = False) -> Path:
    """Fold an LRC checkpoint into a standard HF model directory at ``save_path``.

    Args:
        ckpt_path: weights file, ``checkpoint-N`` directory, or training output directory.
        save_path: output directory (must not exist or be empty, unless ``overwrite``).
        raw_model_name: teacher path overriding the one stored in the checkpoint.
        flags: variant flags given on the command line; checked against the stored config.
        dtype: output dtype ("float32", "bfloat16", "float16"; default: the teacher's).
    """
    out = Path(save_path)
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise ConversionError(f"--save-path {str(out)!r} exists and is not empty (pass --overwrite to replace it)")
    student, teacher_path, lrc, _ = build_student(ckpt_path, raw_model_name, flags)
    target_dtype = getattr(torch, dtype) if dtype else _teacher_dtype(teacher_path)
    if not isinstance(target_dtype, torch.dtype):
        raise ConversionError(f"--dtype {dtype!r} is not a torch dtype (float32, bfloat16, float16)")
    student.to(target_dtype)
    try:
        student.generation_config = GenerationConfig.from_pretrained(*_gen_src(teacher_path))
    except OSError:
        pass  # teacher has no generation_config.json: keep the one derived from the config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        student.save_pretrained(tmp)
        tok = load_tokenizer(teacher_path)
        tok.save_pretrained(tmp)
        (tmp / "lrc_conversion.json").write_text(json.dumps(
            {"source_checkpoint": str(Path(ckpt_path).resolve()), "teacher": teacher_path,
             "lrc": lrc.to_dict(), "dtype": str(target_dtype).replace("torch.", "")}, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp creates 0700
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote the converted student to %s", out)
    return out


def _gen_src(teacher_path: str) -> tuple:
    p = Path(teacher_path)
    return (str(p.parent),) if p.suffix == ".gguf" else (teacher_path,)


__all__ = ["convert_checkpoint", "build_student", "fold", "ConversionError", "CheckpointError"]
