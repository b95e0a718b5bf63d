"""Teacher families (chosen by ``config.model_type``, never by path) and the student's HF config.

All supported families share the decoder layout the LRC core relies on:
``model.embed_tokens``, ``model.layers.L.self_attn.{q,k,v,o}_proj`` (optional biases),
``model.layers.L.mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``,
``model.norm``, ``lm_head``; Qwen3 adds ``self_attn.{q,k}_norm`` on head_dim, which the student keeps.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from transformers import PretrainedConfig

from lrc.config import LRCConfig, LRCConfigError
from lrc.errors import LRCError

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


class UnsupportedTeacherError(LRCError, ValueError):
    """The teacher's model_type is not one LRC supports."""


def check_family(config: PretrainedConfig) -> str:
    """Return the teacher family (its model_type) or raise naming the supported ones."""
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_FAMILIES:
        raise UnsupportedTeacherError(
            f"unsupported teacher model_type {mt!r}; supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return mt


def teacher_head_dim(config: PretrainedConfig) -> int:
    """The teacher's attention head dimension h (explicit ``head_dim`` or hidden / heads)."""
    h = getattr(config, "head_dim", None)
    return int(h) if h else config.hidden_size // config.num_attention_heads


def is_tied(config: PretrainedConfig) -> bool:
    """Whether the model's LM head is the input embedding."""
    return bool(getattr(config, "tie_word_embeddings", False))


def student_is_tied(teacher_config: PretrainedConfig, lrc: LRCConfig) -> bool:
    """The student's head equals its embedding only if the teacher is tied AND the projection is tied."""
    return is_tied(teacher_config) and lrc.tie_word_emb_proj


def student_config(teacher_config: PretrainedConfig, lrc: LRCConfig) -> PretrainedConfig:
    """The HF config of the student: the teacher's, with ``hidden_size = d_s``.

    Keeps the teacher's heads, kv heads, explicit ``head_dim``, ``intermediate_size``, vocabulary and
    RoPE parameters; drops the layers in ``del_layers`` (and their ``layer_types`` entries); uses the
    student's RMSNorm eps; ties embeddings only when the student really is tied.
    """
    check_family(teacher_config)
    lrc.validate(teacher_config)
    cfg = copy.deepcopy(teacher_config)
    kept = lrc.kept_layers(teacher_config.num_hidden_layers)
    cfg.head_dim = teacher_head_dim(teacher_config)
    cfg.hidden_size = lrc.target_hidden_size
    cfg.num_hidden_layers = len(kept)
    layer_types = getattr(teacher_config, "layer_types", None)
    if layer_types is not None:
        cfg.layer_types = [layer_types[i] for i in kept]
    cfg.rms_norm_eps = lrc.target_rms_norm_eps
    cfg.tie_word_embeddings = student_is_tied(teacher_config, lrc)
    if getattr(cfg, "architectures", None) is None:
        cfg.architectures = [type(teacher_config).__name__.replace("Config", "ForCausalLM")]
    # Quantisation settings of the teacher (e.g. a GGUF source) do not describe the student.
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(cfg, key):
            try:
                delattr(cfg, key)
            except AttributeError:
                pass
    why = _config_refusal(cfg)
    if why:
        raise LRCConfigError(f"target_hidden_size={lrc.target_hidden_size}: the student's {type(cfg).__name__} would "
                             f"not load in transformers ({why}); nearest widths it accepts: "
                             f"{', '.join(map(str, _nearest_valid_widths(cfg, teacher_config.hidden_size)))}")
    return cfg


def _config_refusal(cfg: PretrainedConfig) -> str | None:
    """transformers' own check of a config (``validate``: e.g. Llama wants hidden_size divisible by the number of
    heads, even with an explicit head_dim), or None when it passes. A config that fails it is written without
    complaint but refused by ``from_pretrained``: so the student's is checked before training, not at conversion."""
    validate = getattr(cfg, "validate", None)
    if validate is None:
        return None
    try:
        validate()
    except Exception as e:  # noqa: BLE001 - transformers raises its own validation error types
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return lines[-1] if lines else type(e).__name__
    return None


def _nearest_valid_widths(cfg: PretrainedConfig, teacher_hidden: int) -> list[int]:
    """The nearest student widths below and above ``cfg.hidden_size`` (under the teacher's) that pass ``validate``."""
    want = cfg.hidden_size
    found = []
    for candidates in (range(want - 1, 0, -1), range(want + 1, teacher_hidden)):
        for w in candidates:
            probe = copy.deepcopy(cfg)
            probe.hidden_size = w
            if _config_refusal(probe) is None:
                found.append(w)
                break
    return sorted(found)


# Keys of a config dict that do not change the network a checkpoint was trained against.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
    "quantization_config", "_attn_implementation", "_attn_implementation_autoset", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "_commit_hash", "pad_token_id",
}


def config_hash(config: PretrainedConfig | dict[str, Any]) -> str:
    """A stable sha256 of the architecture-defining part of a teacher config (first 16 hex digits).

    Stored in checkpoints so that conversion against a different teacher is refused.
    """
    d = config if isinstance(config, dict) else config.to_dict()
    d = {k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")}
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
