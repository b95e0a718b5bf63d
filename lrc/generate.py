"""Where student weights are generated: W_S = W_T W_p, in one function, for training and conversion.

``generate_student_weights`` maps every parameter name of the student's standard HF model to a
tensor built from the frozen teacher's tensors and the trainable projections. Training calls it once
per forward (in the working dtype, with autograd); conversion calls it once in fp32. Because both
use the same function and the same HF class, the converted model *is* the trained student.

Rules (teacher layer L feeds student layer j, see LRCConfig.kept_layers):

- input-side linears (q, k, v, gate, up):   W_S = W_T @ P        (P: d x d_s), bias unchanged
- output-side linears (o, down):            W_S = C @ W_T        (C: d_s x d), bias_S = C @ b_T
- embedding / head:                         E_S = E_T @ Z^T      (Z: d_s x d)
- q_norm / k_norm (Qwen3, on head_dim):     teacher's, unchanged (frozen)
- RMSNorm gains:                            the student's own trainable gains
- MLP weights under ``mlp_train`` dense | core: plus Delta (``lrc.mlp_train.mlp_delta``): the trainable
  ``M`` itself (dense) or its projection onto the complement of the teacher's reachable space (core)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from lrc.config import LRCConfig
from lrc.errors import LRCError
from lrc.mlp_train import delta_name, mlp_delta
from lrc.projections import LRCProjections

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_IN_SIDE = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
            "mlp.gate_proj": "gate", "mlp.up_proj": "up"}
_MLP_WEIGHTS = {"mlp.gate_proj.weight": "gate", "mlp.up_proj.weight": "up", "mlp.down_proj.weight": "down"}
_OUT_SIDE = {"self_attn.o_proj": "o", "mlp.down_proj": "down"}
_TEACHER_KEPT = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
_GAINS = {"input_layernorm.weight": "input_norm", "post_attention_layernorm.weight": "post_attention_norm"}


class GenerationError(LRCError, KeyError):
    """A student parameter has no generation rule, or a needed teacher tensor is missing."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


def _input_projection(lrc: LRCConfig, layer, kind: str) -> Tensor:
    """The (d, d_s) matrix P with W_S = W_T @ P for an input-side linear."""
    if kind in ("q", "k", "v"):
        return getattr(layer, kind) if lrc.use_all_attn else layer.qkv
    # gate / up
    return layer.mlp_in if lrc.use_in_out_mlp else getattr(layer, kind).t()


def generate_student_weights(
    teacher_params: Mapping[str, Tensor],
    proj: LRCProjections,
    lrc: LRCConfig,
    kept_layers: list[int],
    student_param_names: list[str],
    teacher_tied: bool,
    dtype: torch.dtype | None = None,
    core_bases: Mapping[tuple[int, str], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Build the student's parameters (standard HF names) from the teacher and the projections.

    Args:
        teacher_params: teacher tensors by HF name (``model.layers.3.mlp.up_proj.weight``, ...);
            ``lm_head.weight`` may be absent when the teacher is tied.
        proj: the trainable projections and gains.
        kept_layers: teacher layer index of each student layer.
        student_param_names: ``[n for n, _ in student.named_parameters()]`` of the student model.
        teacher_tied: the teacher's head is its embedding.
        dtype: compute dtype (None: the teacher's). Projections and gains are cast to it (autograd-safe).
        core_bases: ``(teacher layer, kind) -> Q`` (I x r) for ``mlp_train="core"`` (``lrc.mlp_train.core_bases``).

    Returns:
        name -> tensor; e.g. ``model.layers.j.mlp.down_proj.weight`` of shape (d_s, I).
    """

    def t(name: str) -> Tensor:
        try:
            w = teacher_params[name]
        except KeyError:
            raise GenerationError(f"teacher tensor {name!r} is missing") from None
        return w if dtype is None else w.to(dtype)

    def p(x: Tensor, like: Tensor) -> Tensor:
        return x.to(like.dtype)

    # Working dtype: the requested one, else the teacher's (fp32 master projections and gains are
    # cast to it, differentiably, so a bf16 teacher runs a bf16 student without autocast).
    work = dtype or teacher_params["model.embed_tokens.weight"].dtype

    out: dict[str, Tensor] = {}
    for name in student_param_names:
        if name == "model.embed_tokens.weight":
            e = t("model.embed_tokens.weight")
            out[name] = e @ p(proj.embed, e).t()
        elif name == "lm_head.weight":
            u = t("model.embed_tokens.weight" if teacher_tied else "lm_head.weight")
            z = proj.embed if lrc.tie_word_emb_proj else proj.lm_head
            out[name] = u @ p(z, u).t()
        elif name == "model.norm.weight":
            out[name] = proj.final_norm.to(work)
        else:
            m = _LAYER_RE.match(name)
            if m is None:
                raise GenerationError(f"student parameter {name!r} has no LRC generation rule")
            j, rest = int(m.group(1)), m.group(2)
            L = kept_layers[j]
            layer = proj.layers[str(L)]
            tname = f"model.layers.{L}.{rest}"
            module, _, leaf = rest.rpartition(".")
            if rest in _GAINS:
                out[name] = getattr(layer, _GAINS[rest]).to(work)
            elif rest in _TEACHER_KEPT or (module in _IN_SIDE and leaf == "bias"):
                out[name] = t(tname)
            elif module in _IN_SIDE and leaf == "weight":
                w = t(tname)
                out[name] = w @ p(_input_projection(lrc, layer, _IN_SIDE[module]), w)
            elif module in _OUT_SIDE and leaf in ("weight", "bias"):
                w = t(tname)
                c = p(getattr(layer, _OUT_SIDE[module]), w)
                out[name] = c @ w
            else:
                raise GenerationError(f"student parameter {name!r} has no LRC generation rule")
            if lrc.mlp_train != "lrc" and rest in _MLP_WEIGHTS:
                kind = _MLP_WEIGHTS[rest]
                basis = None
                if lrc.mlp_train == "core":
                    if core_bases is None or (L, kind) not in core_bases:
                        raise GenerationError(f"mlp_train='core': no complement basis for layer {L} {kind}")
                    basis = core_bases[(L, kind)]
                out[name] = out[name] + mlp_delta(lrc.mlp_train, kind, getattr(layer, delta_name(kind)),
                                                  basis).to(out[name].dtype)
    return out
