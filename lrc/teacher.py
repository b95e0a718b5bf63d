"""Loading a teacher (an HF directory / hub id, or a single ``.gguf`` file), its tokenizer and its identity.

No remote code is ever trusted. A ``.gguf`` file is dequantised by transformers (needs ``gguf``).
Every failure to find or read a teacher is a ``TeacherError`` naming the path and what was expected.

Identity (``teacher_identity``): a checkpoint records the teacher's config hash (architecture) and a
fingerprint of its weights: the sha256 of each weight file, combined. Each file's sha256 is computed
once and cached by the file's path, size, mtime and inode (``lrc.file_cache``), so for a 70B teacher
(~140 GB) the first run reads the files once (~2 min at ~1 GB/s) and later runs only stat them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from lrc.errors import LRCError
from lrc.families import config_hash, family_of
from lrc.file_cache import cached_json

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
"""Files of a model directory that hold weights (what the weights fingerprint covers)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "spiece.model")
EMPTY_TOKENIZER_FRACTION = 0.5
"""A tokenizer with fewer tokens than this fraction of the model's vocabulary is taken as missing: a
model directory without tokenizer files makes some tokenizer classes (Qwen2's) build an empty one."""


class TeacherError(LRCError):
    """The teacher (or its tokenizer) cannot be found or read; the message names the path."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _split(path: str) -> tuple[str, dict]:
    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise TeacherError(f"teacher GGUF file {path!r} does not exist")
        return str(p.parent), {"gguf_file": p.name}
    return path, {}


def load_teacher_config(path: str) -> PretrainedConfig:
    """A model's config (teacher or converted student), checked to be a supported family."""
    src, kw = _split(path)
    p = Path(src)
    if not kw:
        if not p.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise TeacherError(f"model {path!r} is not a local directory or .gguf file (and HF_HUB_OFFLINE=1)")
        if p.is_file():
            raise TeacherError(f"model {path!r} is a file: expected a Hugging Face model directory or a .gguf file")
        if p.is_dir() and not (p / "config.json").is_file():
            raise TeacherError(f"model directory {path!r} has no config.json: expected a Hugging Face model directory "
                               f"(config.json + weights) or a .gguf file")
    try:
        cfg = AutoConfig.from_pretrained(src, trust_remote_code=False, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise TeacherError(f"cannot read the config of model {path!r} ({_first_line(e)})") from e
    family_of(cfg)
    return cfg


def load_teacher(path: str, dtype: torch.dtype | None = None, attn_implementation: str | None = None,
                 device: str | torch.device | None = None, config: PretrainedConfig | None = None):
    """Load the teacher: ``load_causal_lm`` (frozen, eval mode; a supported family only)."""
    return load_causal_lm(path, dtype, attn_implementation, device, config)


def load_causal_lm(path: str, dtype: torch.dtype | None = None, attn_implementation: str | None = None,
                   device: str | torch.device | None = None, config: PretrainedConfig | None = None):
    """Load a causal LM of a supported family (a teacher, or a converted student), frozen, in eval mode, without
    remote code.

    Args:
        path: HF model directory / hub id, or a ``.gguf`` file.
        dtype: parameter dtype (None: the checkpoint's; GGUF dequantises to float32).
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2" (None: transformers' default).
        config: its config, already read by ``load_teacher_config`` (None: read here; a .gguf's takes seconds).
    """
    config = load_teacher_config(path) if config is None else config  # unsupported families: before any weights
    src, kw = _split(path)
    kw["config"] = copy.deepcopy(config)  # the caller's stays as it was
    if dtype is not None:
        kw["dtype"] = dtype
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=False, **kw)
    except Exception as e:  # noqa: BLE001 - truncated / corrupt / missing weight files come in many types
        raise TeacherError(f"cannot load the weights of model {path!r} ({_first_line(e)})") from e
    if getattr(model, "hf_quantizer", None) is not None:  # GGUF: weights are already dequantised
        model.hf_quantizer.remove_quantization_config(model)
    if device is not None:
        model.to(device)
    check_finite_weights(model, path)
    model.requires_grad_(False)
    model.eval()
    return model


def empty_causal_lm(config: PretrainedConfig, dtype: torch.dtype | None = None, **kwargs):
    """A causal LM of ``config`` with its parameters on the meta device (no memory, no init; accelerate's
    ``init_empty_weights``) and its buffers real (as the model's init computed them)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=dtype, **kwargs)


@torch.no_grad()
def allocate(model: torch.nn.Module, device: str | torch.device) -> None:
    """Give a model from ``empty_causal_lm`` (sharded since, or not) uninitialised storage on ``device`` for its
    parameters, keeping its buffers (``to_empty`` alone would leave them uninitialised too)."""
    buffers = {n: b.to(device) for n, b in model.named_buffers()}
    model.to_empty(device=device)
    for name, b in buffers.items():
        model.get_buffer(name).copy_(b)


@torch.no_grad()
def nonfinite_weight(model: torch.nn.Module) -> str | None:
    """``"NAME (shape) holds N NaN and M infinite value(s)"`` for the first weight tensor of ``model`` that holds a NaN
    or an infinity, or None.

    The test is the tensor's fp32 sum (NaN and inf propagate; finite weights of a sane model cannot overflow it): a
    memory-bound reduction without a temporary, ~20x faster than ``isfinite().all()`` on the CPU
    (docs/BENCHMARKS.md)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p.sum(dtype=torch.float32))):
                nan, inf = int(torch.isnan(p).sum()), int(torch.isinf(p).sum())
                return (f"{name} {tuple(p.shape)} holds {nan} NaN and {inf} infinite value(s)"
                        f"{'' if nan + inf else ' (or values so large their sum overflows)'}")
    return None


def check_finite_weights(model: torch.nn.Module, path: str) -> None:
    """Raise TeacherError naming the first weight tensor that holds a NaN or an infinity (one pass over the weights,
    at load: a non-finite teacher weight would otherwise surface later as a NaN loss or a linear-algebra failure)."""
    bad = nonfinite_weight(model)
    if bad:
        raise TeacherError(f"model {path!r}: weight tensor {bad}; its files are corrupt or it was saved after "
                           f"training diverged")


# ---------------------------------------------------------------------------------------------- tokenizer
def find_tokenizer(path: str, vocab_size: int | None = None):
    """``(tokenizer, "")``, or ``(None, why)`` when ``path`` has no usable tokenizer.

    Unusable: no tokenizer files in a model directory, a loader error, or an "empty" tokenizer (fewer
    than ``EMPTY_TOKENIZER_FRACTION`` x ``vocab_size`` tokens).
    """
    src, kw = _split(path)
    p = Path(src)
    if not kw and p.is_dir() and not any((p / n).is_file() for n in TOKENIZER_FILES):
        return None, f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})"
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False, **kw)
    except Exception as e:  # noqa: BLE001 - e.g. "need sentencepiece or tiktoken", a malformed tokenizer.json
        return None, f"cannot load the tokenizer of {path} ({_first_line(e)})"
    if vocab_size and len(tok) < EMPTY_TOKENIZER_FRACTION * vocab_size:
        return None, (f"the tokenizer of {path} has {len(tok)} tokens for a model vocabulary of {vocab_size} (an empty "
                      f"tokenizer: are its tokenizer files missing?)")
    return tok, ""


def load_tokenizer(path: str, vocab_size: int | None = None):
    """The tokenizer of ``path`` (directory / hub id / ``.gguf``); TeacherError if it has no usable one."""
    tok, why = find_tokenizer(path, vocab_size)
    if tok is None:
        raise TeacherError(why)
    return tok


# ---------------------------------------------------------------------------------------------- identity
def teacher_fingerprint(config: PretrainedConfig) -> str:
    """Hash of the architecture-defining config (stored in checkpoints beside the weights fingerprint)."""
    return config_hash(config)


def weight_files(path: str) -> list[Path]:
    """The files holding a model's weights: the ``.gguf`` itself, or the weight files of its directory
    (a hub id is resolved to its local snapshot, downloading it if allowed)."""
    src, kw = _split(path)
    if kw:
        return [Path(path)]
    d = Path(src)
    if not d.exists():
        from huggingface_hub import snapshot_download

        try:
            d = Path(snapshot_download(src, allow_patterns=[f"*{s}" for s in WEIGHT_SUFFIXES] + ["*.json"]))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, ...
            raise TeacherError(f"model {path!r} is not a local path and cannot be resolved on the hub "
                               f"({_first_line(e)})") from e
    files = sorted(f for f in d.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise TeacherError(f"model directory {str(d)!r} holds no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    return files


def weights_fingerprint(path: str, progress: bool = True) -> str:
    """A hash that changes when any weight file of ``path`` changes (see the module docstring)."""
    from lrc.files import sha256_file

    files = weight_files(path)
    total = sum(f.stat().st_size for f in files)
    bar = None
    if progress and total > (1 << 30):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="teacher weights sha256 (cached after the first run)",
                   file=sys.stderr)
    parts = []
    for f in files:
        parts.append([f.name, cached_json("sha256", f, lambda f=f: sha256_file(f))])
        if bar is not None:
            bar.update(f.stat().st_size)
    if bar is not None:
        bar.close()
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
