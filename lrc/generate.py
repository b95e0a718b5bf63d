"""Where student weights are generated: W_S = W_T W_p, in one function, for training and conversion.

``generate_student_weights`` maps every parameter name of the student's standard HF model to a
tensor built from the frozen teacher's tensors and the trainable projections. Training calls it once
per forward (in the working dtype, with autograd); conversion calls it once in fp32. Because both
use the same function and the same HF class, the converted model *is* the trained student.

Rules (teacher layer L feeds student layer j, see LRCConfig.kept_layers):

- input-side linears (q, k, v, gate, up):   W_S = W_T @ P        (P: d x d_s), bias unchanged
- output-side linears (o, down):            W_S = C @ W_T        (C: d_s x d), bias_S = C @ b_T
- embedding / head:                         E_S = E_T @ Z^T      (Z: d_s x d)
- q_norm / k_norm (Qwen3, Gemma 3, on head_dim): teacher's, unchanged (frozen)
- RMSNorm gains:                            the student's own trainable gains (stored as the family stores a
                                            gain: Gemma's ``gain - 1``)
- MLP weights under ``mlp_train`` dense | core: plus Delta (``lrc.mlp_train.mlp_delta``): the trainable
  ``M`` itself (dense) or its projection onto the complement of the teacher's reachable space (core)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import torch
from torch import Tensor

from lrc.config import LRCConfig
from lrc.errors import LRCError
from lrc.families import LLAMA_LIKE, Family
from lrc.mlp_train import IN_SIDE_KINDS, MLP_KINDS, OUT_SIDE_KINDS, delta_name, mlp_delta
from lrc.projections import LRCProjections


@lru_cache(maxsize=None)
def _rules(family: Family) -> tuple:
    """The family's names for the generation rules: (layer regex, input-side linears, output-side linears, MLP
    weights, teacher-kept tensors, gains by weight name)."""
    layer_re = re.compile(rf"^{re.escape(family.layers)}\.(\d+)\.(.+)$")
    in_side = {family.linear(k): k for k in IN_SIDE_KINDS}
    out_side = {family.linear(k): k for k in OUT_SIDE_KINDS}
    mlp_weights = {f"{family.linear(k)}.weight": k for k in MLP_KINDS}
    gains = {f"{norm}.weight": gain for norm, gain in family.gains.items()}
    return layer_re, in_side, out_side, mlp_weights, family.teacher_kept, gains


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
    family: Family = LLAMA_LIKE,
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
        family: the teacher's ``lrc.families.Family`` (its names, its gains and how it stores them).

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

    layer_re, in_side, out_side, mlp_weights, teacher_kept, gains = _rules(family)
    embed, head, final_norm = f"{family.embed}.weight", f"{family.head}.weight", f"{family.final_norm}.weight"
    # Working dtype: the requested one, else the teacher's (fp32 master projections and gains are
    # cast to it, differentiably, so a bf16 teacher runs a bf16 student without autocast).
    work = dtype or teacher_params[embed].dtype

    def gain(g: Tensor) -> Tensor:  # the gain as the family stores it (Gemma: gain - 1)
        return family.stored_gain(g).to(work)

    out: dict[str, Tensor] = {}
    for name in student_param_names:
        if name == embed:
            e = t(embed)
            out[name] = e @ p(proj.embed, e).t()
        elif name == head:
            u = t(embed if teacher_tied else head)
            z = proj.embed if lrc.tie_word_emb_proj else proj.lm_head
            out[name] = u @ p(z, u).t()
        elif name == final_norm:
            out[name] = gain(proj.final_norm)
        else:
            m = layer_re.match(name)
            if m is None:
                raise GenerationError(f"student parameter {name!r} has no LRC generation rule")
            j, rest = int(m.group(1)), m.group(2)
            L = kept_layers[j]
            layer = proj.layers[str(L)]
            tname = f"{family.layers}.{L}.{rest}"
            module, _, leaf = rest.rpartition(".")
            if rest in gains:
                out[name] = gain(getattr(layer, gains[rest]))
            elif rest in teacher_kept or (module in in_side and leaf == "bias"):
                out[name] = t(tname)
            elif module in in_side and leaf == "weight":
                w = t(tname)
                out[name] = w @ p(_input_projection(lrc, layer, in_side[module]), w)
            elif module in out_side and leaf in ("weight", "bias"):
                w = t(tname)
                c = p(getattr(layer, out_side[module]), w)
                out[name] = c @ w
            else:
                raise GenerationError(f"student parameter {name!r} has no LRC generation rule")
            if lrc.mlp_train != "lrc" and rest in mlp_weights:
                kind = mlp_weights[rest]
                basis = None
                if lrc.mlp_train == "core":
                    if core_bases is None or (L, kind) not in core_bases:
                        raise GenerationError(f"mlp_train='core': no complement basis for layer {L} {kind}")
                    basis = core_bases[(L, kind)]
                out[name] = out[name] + mlp_delta(lrc.mlp_train, kind, getattr(layer, delta_name(kind)),
                                                  basis).to(out[name].dtype)
    return out
