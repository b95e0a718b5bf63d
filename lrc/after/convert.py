"""Conversion: fold the projections into a standalone, standard HF student checkpoint.

``convert_checkpoint`` reads a self-describing LRC checkpoint (or an official-code one), generates the student
weights with the *same* function training uses (``lrc.generate.generate_student_weights``, in fp32, one tensor at a
time from the teacher tensors it reads: ``lrc.after.fold``), stores them in the student's standard HF class in the
output dtype (default: the teacher's) and saves it with the teacher's tokenizer and generation config.

The output is built in a temporary sibling directory and renamed at the end: on any error nothing
is left at ``save_path``. What conversion protects (``check_save_path``, ``SourceInfo``):

- the source is verified against its manifest (sizes and sha256) before anything is folded, and the
  step converted is said (and stored in ``lrc_conversion.json``), with a note when the run holds a
  newer complete checkpoint than the final weights converted;
- ``save_path`` is never a training run, a checkpoint or a teacher, never inside a checkpoint or a
  teacher's directory and never contains any of them; ``--overwrite`` replaces only an earlier
  conversion's output (a directory with ``lrc_conversion.json``);
- two conversions racing for one new ``save_path`` cannot both succeed (the final rename never
  replaces a directory another process filled);
- what a killed conversion left beside ``save_path`` is removed by the next one into it;
- the converted student must give finite logits on a test input (weights that diverged are refused).

``export_arch="llama"`` writes a Qwen2-family student as a Llama-architecture checkpoint
(``LlamaForCausalLM`` with ``attention_bias=True``: the q/k/v biases are kept and o_proj gets a bias
of zeros), for serving engines that mishandle Qwen2's explicit ``head_dim``. The network computes
the same function (tested: equal logits in fp32).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM

from lrc.after.convert_checks import (
    CONVERSION_RECORD,
    ConversionError,
    SourceInfo,
    check_finite_output,
    check_save_path,
)
from lrc.after.fold import build_student, fold, teacher_path_of
from lrc.checkpoint import (
    WEIGHTS_NAME,
    CheckpointError,
    list_checkpoints,
    load_lrc_checkpoint,
)
from lrc.files import atomic_dir
from lrc.teacher import (
    find_tokenizer,
    load_causal_lm,
    load_teacher_config,
    load_tokenizer,
)

log = logging.getLogger(__name__)

EXPORT_ARCHS = ("llama",)
"""Values of ``--export_arch``: write the student in another (equivalent) architecture."""
OUTPUT_DTYPES = ("float32", "bfloat16", "float16")
"""Values of ``--dtype``."""


# ----------------------------------------------------------------------------- standard HF checkpoints


def _safetensors_keys(directory: Path) -> list[str] | None:
    """Tensor names of ``model*.safetensors`` in ``directory`` (None: there are none)."""
    from safetensors import safe_open

    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        return None
    keys: list[str] = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                keys += list(sf.keys())
        except Exception:  # unreadable: let the checkpoint loader report it
            return None
    return keys


def standard_hf_checkpoint(path: str | os.PathLike) -> Path | None:
    """The directory if ``path`` is (in) a standard HF model checkpoint rather than an LRC one, else None.

    Standard: ``config.json`` + ``model*.safetensors`` without LRC or official-LRC tensors, and no
    ``lrc_weights.safetensors``. A run directory whose latest ``checkpoint-N`` is one counts too.
    """
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not p.is_dir():
        return None
    candidates = [p]
    if not (p / WEIGHTS_NAME).exists() and not any(p.glob("model*.safetensors")):
        ckpts = list_checkpoints(p)
        if ckpts:
            candidates = [ckpts[-1][1]]
    for d in candidates:
        if (d / WEIGHTS_NAME).exists() or not (d / "config.json").is_file():
            continue
        keys = _safetensors_keys(d)
        if keys and not any("zoom" in k or "target_" in k for k in keys):
            return d
    return None


# ----------------------------------------------------------------------------- Qwen2 -> Llama export


def _llama_export_refusal(config) -> str | None:
    """Why a student of this config cannot be written as Llama (None: it can)."""
    mt = config.model_type
    if mt == "llama":
        return "the student is already a Llama-architecture checkpoint; drop --export_arch"
    if mt == "qwen3":
        return ("qwen3 students have per-head q_norm/k_norm RMSNorms that Llama lacks; a Llama export would "
                "change the network (serve it as Qwen3)")
    if mt != "qwen2":
        return f"--export_arch llama is for qwen2-family students; this one is {mt!r} (serve it as it is)"
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "use_sliding_window", False) and any(t != "full_attention" for t in layer_types):
        return "this qwen2 student uses sliding-window attention, which Llama lacks"
    return None


def llama_config_from_qwen2(config) -> LlamaConfig:
    """The Llama config computing the same network as a Qwen2 config (``attention_bias=True``)."""
    from lrc.families import teacher_head_dim

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=teacher_head_dim(config),
        hidden_act=config.hidden_act, max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range, rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings, rope_parameters=dict(config.rope_parameters or {}) or None,
        attention_bias=True, mlp_bias=False, attention_dropout=config.attention_dropout,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        architectures=["LlamaForCausalLM"], dtype=getattr(config, "dtype", None),
    )


@torch.no_grad()
def export_as_llama(student: torch.nn.Module) -> LlamaForCausalLM:
    """A Qwen2 student as an equivalent ``LlamaForCausalLM`` (same dtype; o_proj biases are zeros)."""
    why = _llama_export_refusal(student.config)
    if why:
        raise ConversionError(f"--export_arch llama: {why}")
    dtype = next(student.parameters()).dtype
    llama = LlamaForCausalLM(llama_config_from_qwen2(student.config)).to(dtype)
    src = dict(student.named_parameters())
    dst = dict(llama.named_parameters())
    zero_bias = {k for k in dst if k.endswith("self_attn.o_proj.bias")}
    missing = sorted(set(dst) - set(src) - zero_bias)
    unexpected = sorted(set(src) - set(dst))
    if missing or unexpected:
        raise ConversionError(f"--export_arch llama: parameter names differ: missing {missing}, unexpected {unexpected}")
    for k, p in dst.items():
        if k in zero_bias:
            p.zero_()
        else:
            p.copy_(src[k])
    llama.generation_config = student.generation_config
    return llama.eval()





def _teacher_dtype(teacher_path: str) -> torch.dtype:
    return _config_dtype(load_teacher_config(teacher_path))


def _config_dtype(cfg) -> torch.dtype:
    dt = getattr(cfg, "dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) else torch.float32


def convert_checkpoint(ckpt_path: str, save_path: str, raw_model_name: str | None = None,
                       flags: dict[str, Any] | None = None, dtype: str | None = None,
                       overwrite: bool = False, export_arch: str | None = None, tokenizer: str | None = None) -> Path:
    """Fold an LRC checkpoint into a standard HF model directory at ``save_path`` (module docstring).

    Args:
        ckpt_path: weights file, ``checkpoint-N`` directory, or training output directory.
        save_path: output directory (must not exist or be empty, unless ``overwrite``).
        raw_model_name: teacher path overriding the one stored in the checkpoint.
        flags: variant flags given on the command line; checked against the stored config.
        dtype: output dtype (``OUTPUT_DTYPES``; default: the teacher's).
        overwrite: replace ``save_path`` if it holds an earlier conversion's output.
        export_arch: "llama" writes a Qwen2-family student as an equivalent Llama checkpoint. With a
            standard HF Qwen2 checkpoint as ``ckpt_path`` (an already converted student) it only re-exports.
        tokenizer: where the student's tokenizer comes from (default: the teacher). Without a usable
            one the student is written without a tokenizer, with a warning.
    """
    out = Path(save_path)
    target_dtype = _parse_dtype(dtype) if dtype else None
    if export_arch is not None and export_arch not in EXPORT_ARCHS:
        raise ConversionError(f"--export_arch {export_arch!r}: expected one of {', '.join(EXPORT_ARCHS)}")
    std = standard_hf_checkpoint(ckpt_path)
    if std is not None and export_arch is None:
        raise ConversionError(
            f"--ckpt-path {str(ckpt_path)!r} is a standard HF checkpoint ({std / 'config.json'} + model safetensors, no "
            f"{WEIGHTS_NAME}; e.g. a --model_cls origin/only_kd/tiny_bert baseline run or an already converted student): "
            f"it needs no conversion, load it with AutoModelForCausalLM.from_pretrained({str(std)!r})")
    if std is not None:
        check_save_path(out, overwrite, source=std)
        return _reexport(std, out, export_arch, target_dtype, overwrite)
    source = SourceInfo.of(ckpt_path)
    ckpt = load_lrc_checkpoint(source.weights)
    teacher_path = teacher_path_of(ckpt, raw_model_name)
    check_save_path(out, overwrite, source=source.weights.parent, teacher=Path(teacher_path))
    for note in source.notes:
        log.warning(note)
    target_dtype = target_dtype or _teacher_dtype(teacher_path)
    student, teacher_path, lrc = build_student(str(source.weights), raw_model_name, flags, ckpt=ckpt,
                                               dtype=target_dtype)
    if export_arch == "llama":
        student = export_as_llama(student)
    check_finite_output(student, source)
    try:
        student.generation_config = GenerationConfig.from_pretrained(*_gen_src(teacher_path))
    except OSError:
        pass  # teacher has no generation_config.json: keep the one derived from the config
    meta = {"source_checkpoint": str(Path(ckpt_path).resolve()), "source_weights": str(source.weights.resolve()),
            "step": source.step, "verified": source.verified, "teacher": teacher_path, "lrc": lrc.to_dict(),
            "dtype": str(target_dtype).replace("torch.", ""), "export_arch": export_arch}
    _save_atomically(out, student, _student_tokenizer(tokenizer, teacher_path, student.config.vocab_size), meta,
                     overwrite)
    log.info("wrote the converted student to %s", out)
    return out


# ----------------------------------------------------------------------------- what is converted, where to


def _student_tokenizer(tokenizer: str | None, teacher_path: str, vocab_size: int):
    """The tokenizer to ship: ``--tokenizer`` (must load), else the teacher's, else None with a warning."""
    if tokenizer:
        return load_tokenizer(tokenizer, vocab_size)
    tok, why = find_tokenizer(teacher_path, vocab_size)
    if tok is None:
        log.warning("%s: the student is written without a tokenizer (pass --tokenizer PATH to add one)", why)
    return tok


def _parse_dtype(dtype: str) -> torch.dtype:
    if dtype not in OUTPUT_DTYPES:
        raise ConversionError(f"--dtype {dtype!r}: expected one of {', '.join(OUTPUT_DTYPES)} (a converted student "
                              f"is a floating-point model; quantise it afterwards with your serving stack)")
    return getattr(torch, dtype)


def _reexport(src: Path, out: Path, export_arch: str, target_dtype: torch.dtype | None, overwrite: bool) -> Path:
    """Write an already converted (standard HF) student in another architecture."""
    cfg = AutoConfig.from_pretrained(src, trust_remote_code=False)
    why = _llama_export_refusal(cfg)
    if why:
        raise ConversionError(f"--export_arch llama: {why}")
    student = load_causal_lm(str(src), dtype=torch.float32)  # the one safe loader (no remote code)
    target_dtype = target_dtype or _config_dtype(cfg)
    llama = export_as_llama(student).to(target_dtype)
    meta = {"source_checkpoint": str(src.resolve()), "dtype": str(target_dtype).replace("torch.", ""),
            "export_arch": export_arch}
    old = src / CONVERSION_RECORD
    if old.is_file():
        meta["conversion"] = json.loads(old.read_text())
        meta["step"] = meta["conversion"].get("step")
    _save_atomically(out, llama, _student_tokenizer(None, str(src), cfg.vocab_size), meta, overwrite)
    log.info("wrote the %s export of %s to %s", export_arch, src, out)
    return out


def _save_atomically(out: Path, model: torch.nn.Module, tokenizer, meta: dict[str, Any], overwrite: bool) -> None:
    """Save model + tokenizer + ``lrc_conversion.json`` to a temporary sibling, then rename it to ``out`` (replacing
    an earlier output only with ``overwrite``; never a directory another process filled meanwhile)."""
    with atomic_dir(out, replace=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / CONVERSION_RECORD).write_text(json.dumps(meta, indent=2) + "\n")


def _gen_src(teacher_path: str) -> tuple:
    p = Path(teacher_path)
    return (str(p.parent),) if p.suffix == ".gguf" else (teacher_path,)


__all__ = ["convert_checkpoint", "build_student", "fold", "export_as_llama", "standard_hf_checkpoint", "ConversionError",
           "CheckpointError"]
