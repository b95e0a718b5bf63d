"""Loading a teacher (an HF directory / hub id, or a single ``.gguf`` file) and its tokenizer.

No remote code is ever trusted. A ``.gguf`` file is dequantised by transformers (needs ``gguf``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from .families import check_family, config_hash


def _split(path: str) -> tuple[str, dict]:
    p = Path(path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"teacher GGUF file {path!r} does not exist")
        return str(p.parent), {"gguf_file": p.name}
    return path, {}


def load_teacher_config(path: str) -> PretrainedConfig:
    """A model's config (teacher or converted student), checked to be a supported family."""
    src, kw = _split(path)
    if not kw and not Path(src).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"model {path!r} is not a local directory or .gguf file (and HF_HUB_OFFLINE=1)")
    cfg = AutoConfig.from_pretrained(src, trust_remote_code=False, **kw)
    check_family(cfg)
    return cfg


def load_teacher(path: str, dtype: torch.dtype | None = None, attn_implementation: str | None = None,
                 device: str | torch.device | None = None):
    """Load a teacher causal LM, frozen, in eval mode.

    Args:
        path: HF model directory / hub id, or a ``.gguf`` file.
        dtype: parameter dtype (None: the checkpoint's; GGUF dequantises to float32).
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2" (None: transformers' default).
    """
    load_teacher_config(path)  # refuse unsupported families before loading any weights
    src, kw = _split(path)
    if dtype is not None:
        kw["dtype"] = dtype
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=False, **kw)
    if getattr(model, "hf_quantizer", None) is not None:  # GGUF: weights are already dequantised
        model.hf_quantizer.remove_quantization_config(model)
    if device is not None:
        model.to(device)
    model.requires_grad_(False)
    model.eval()
    return model


def load_tokenizer(path: str):
    """The teacher's tokenizer (directory / hub id / ``.gguf``)."""
    src, kw = _split(path)
    return AutoTokenizer.from_pretrained(src, trust_remote_code=False, **kw)


def teacher_fingerprint(config: PretrainedConfig) -> str:
    """Config hash stored in checkpoints to refuse conversion against another teacher."""
    return config_hash(config)
