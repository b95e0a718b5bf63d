"""Tiny random teachers of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 101
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text")


def tiny_config(family: str, tied: bool, layers: int = 3, **extra):
    """d=64, 4 heads / 2 kv heads, I=96, V=101. Qwen3 uses an explicit head_dim (24 != 64/4); the Gemmas head_dim 16,
    query_pre_attn_scalar 24 (not head_dim), alternating sliding-window (5) and full layers, GeGLU; Gemma 2 soft-caps
    its attention and final logits."""
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, tie_word_embeddings=tied, max_position_embeddings=128,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    common.update(extra)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(head_dim=24, **common)
    if family == "mistral":
        return MistralConfig(sliding_window=None, **common)
    gemma = dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=5, hidden_activation="gelu_pytorch_tanh",
                 layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(layers)])
    if family == "gemma2":  # soft-capping made to bind on the random teacher (30 / 50 in the real models)
        return Gemma2Config(final_logit_softcapping=3.0, attn_logit_softcapping=5.0, **gemma, **common)
    if family == "gemma3_text":
        return Gemma3TextConfig(**gemma, **common)
    raise ValueError(family)


def tiny_teacher(family: str = "llama", tied: bool = True, seed: int = 0, layers: int = 3, **extra):
    """A random fp32 teacher with non-trivial weights (std 0.2), biases and norm gains randomised."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tied, layers, **extra), dtype=torch.float32,
                                             attn_implementation="eager")
    with torch.no_grad():
        offset = 0.0 if family.startswith("gemma") else 1.0  # Gemma stores gain - 1
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(offset + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.2)
    return model.eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(VOCAB - 3)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def save_teacher(model, path: str | os.PathLike) -> str:
    """Save a teacher + tokenizer + generation config as a standard HF directory."""
    path = Path(path)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def randomize_projections(lrc_model, seed: int = 1, scale: float = 0.3) -> None:
    """Move projections and gains away from their initial values (gains != 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lrc_model.projections.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(scale * noise / p.shape[-1] ** 0.5 * 4)
