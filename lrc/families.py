"""Teacher families: one ``Family`` adapter per layout, chosen by ``config.model_type`` (never by path), and the
student's HF config.

A ``Family`` declares, once, what the LRC core reads from a model of that family: where the decoder layers, the
embedding, the final norm and the head are; the attention and MLP linears of a layer; which RMSNorm gains the student
trains (and how the family stores a gain: Gemma stores ``gain - 1``); which teacher tensors the student keeps as
they are (Qwen3's and Gemma 3's per-head q/k norms); the residual-stream norms whose outputs the layer's matrices
read (the activation-aware init scores channels there); the buffers the student needs that no weight gives (Gemma's
embedding scale sqrt(d_s)); the soft-cap of the final logits (Gemma 2). Weight generation (``lrc.generate``), the
clone-capture sites (``lrc.model``), Dense/CORE (``lrc.mlp_train``), the activation init and conversion read it.

- ``LLAMA_LIKE`` (llama, mistral, qwen2, qwen3): ``model.embed_tokens``, ``model.layers.L.self_attn.{q,k,v,o}_proj``
  (optional biases), ``mlp.{gate,up,down}_proj``, ``input_layernorm`` and ``post_attention_layernorm`` (before
  attention and before the MLP), ``model.norm``, ``lm_head``; Qwen3 adds ``self_attn.{q,k}_norm``.
- ``GEMMA`` (gemma2, gemma3_text): the same linears, four norms per layer (``input_layernorm`` and
  ``pre_feedforward_layernorm`` before attention and MLP, ``post_attention_layernorm`` and
  ``post_feedforward_layernorm`` on their outputs), every RMSNorm computing ``(1 + w) * x / rms(x)``, embeddings
  scaled by sqrt(hidden_size), GeGLU, ``query_pre_attn_scalar``, attention and final-logit soft-capping (Gemma 2),
  sliding-window layers, per-head q/k norms (Gemma 3). docs/DESIGN.md ("Gemma") says how each maps onto the student.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import PretrainedConfig

from lrc.config import LRCConfig, LRCConfigError
from lrc.errors import LRCError


@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """What the LRC core reads from a decoder-only model of one layout (module docstring)."""

    model_types: tuple[str, ...]
    """The ``config.model_type`` values of this layout."""
    gains: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "input_layernorm": "input_norm", "post_attention_layernorm": "post_attention_norm"})
    """RMSNorm of a decoder layer -> the name of the student's trainable gain for it (``lrc.projections``)."""
    reader_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    """The norms whose outputs the attention and the MLP read (the activation-aware init scores channels there)."""
    norm_offset: float = 0.0
    """A stored RMSNorm weight is ``gain - norm_offset`` (Gemma: 1.0, its norms compute ``(1 + w) * x / rms``)."""
    teacher_kept: tuple[str, ...] = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
    """Tensors of a layer the student takes from the teacher unchanged (per-head norms on head_dim), if present."""
    logit_softcap_attr: str | None = None
    """Config attribute of the final-logit soft-cap ``cap * tanh(z / cap)`` (Gemma 2), applied by the fused loss."""
    embed_scaled: bool = False
    """The embedding output is multiplied by sqrt(hidden_size) (a buffer, ``embed_tokens.embed_scale``)."""
    backbone: str = "model"
    """The decoder stack (embedding, layers, final norm) without the head: it returns the final hidden states."""
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    head: str = "lm_head"
    attention: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"})
    """Linears of the attention block by kind (paths under a decoder layer)."""
    mlp: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"})
    """Linears of the MLP by kind."""
    rotary: str = "model.rotary_emb"
    """The rotary-embedding module the student shares with the teacher (same head_dim and RoPE parameters)."""

    @property
    def gain_names(self) -> tuple[str, ...]:
        """The student's trainable gains of a layer (``lrc.projections.LRCProjections(gains=...)``)."""
        return tuple(self.gains.values())

    def gain_from_stored(self, w):
        """The gain an RMSNorm of this family applies, from its stored weight (Gemma: ``1 + w``)."""
        return w + self.norm_offset if self.norm_offset else w

    def stored_gain(self, g):
        """The weight this family stores for a gain ``g`` (Gemma: ``g - 1``); inverse of ``gain_from_stored``."""
        return g - self.norm_offset if self.norm_offset else g

    def linear(self, kind: str) -> str:
        """The path of a linear kind (q, k, v, o, gate, up, down) under a decoder layer."""
        return self.attention.get(kind) or self.mlp[kind]

    def logit_softcap(self, config: PretrainedConfig) -> float | None:
        """The final-logit soft-cap of a model of this family (None: none)."""
        cap = getattr(config, self.logit_softcap_attr, None) if self.logit_softcap_attr else None
        return float(cap) if cap else None

    def student_buffers(self, skeleton) -> dict[str, Any]:
        """Buffers of the student that no generated weight gives, by name (``{}`` for most families), for its meta
        ``skeleton``: Gemma's embedding scale, transformers' own value (its embedding's ``scalar_embed_scale``)."""
        import torch

        if self.embed_scaled:
            return {f"{self.embed}.embed_scale": torch.tensor(skeleton.get_submodule(self.embed).scalar_embed_scale)}
        return {}


LLAMA_LIKE = Family(model_types=("llama", "mistral", "qwen2", "qwen3"))
GEMMA = Family(
    model_types=("gemma2", "gemma3_text"),
    gains={"input_layernorm": "input_norm", "post_attention_layernorm": "post_attention_norm",
           "pre_feedforward_layernorm": "pre_feedforward_norm", "post_feedforward_layernorm": "post_feedforward_norm"},
    reader_norms=("input_layernorm", "pre_feedforward_layernorm"),
    norm_offset=1.0, logit_softcap_attr="final_logit_softcapping", embed_scaled=True)
FAMILIES: tuple[Family, ...] = (LLAMA_LIKE, GEMMA)
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)
"""Every supported ``model_type``."""


class UnsupportedTeacherError(LRCError, ValueError):
    """The teacher's model_type is not one LRC supports."""


def family_of(config: PretrainedConfig) -> Family:
    """The ``Family`` of a model config, or UnsupportedTeacherError naming the supported model types."""
    mt = getattr(config, "model_type", None)
    for f in FAMILIES:
        if mt in f.model_types:
            return f
    raise UnsupportedTeacherError(
        f"unsupported teacher model_type {mt!r}; supported families: {', '.join(SUPPORTED_FAMILIES)}")


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
    family_of(teacher_config)
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
    except (ValueError, StrictDataclassError) as e:  # what transformers' config validators raise
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
