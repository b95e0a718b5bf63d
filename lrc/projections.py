"""The trainable part of LRC: low-rank projections and the student's RMSNorm gains.

Every tensor keeps the official code's storage shape (docs/METHOD.md §2), so official checkpoints map
one to one (``OFFICIAL_NAMES``). With d = teacher hidden size and d_s = student hidden size:

================  ==========  ==========================================================
name              shape       generated student weight (see lrc/generate.py)
================  ==========  ==========================================================
embed             (d_s, d)    E_S = E_T embed^T; also U_S = U_T embed^T when tie_word_emb_proj
lm_head           (d_s, d)    U_S = U_T lm_head^T (only when not tie_word_emb_proj)
final_norm        (d_s,)      student final RMSNorm gain
layers.L.q|k|v    (d, d_s)    W_{q,S} = W_q q  (use_all_attn)
layers.L.qkv      (d, d_s)    W_{q,S} = W_q qkv, same for k, v (shared, not use_all_attn)
layers.L.o        (d_s, d)    W_{o,S} = o W_o (and b_{o,S} = o b_o if the teacher has a bias)
layers.L.gate|up  (d_s, d)    W_{g,S} = W_g gate^T (full MLP)
layers.L.mlp_in   (d, d_s)    W_{g,S} = W_g mlp_in, W_{u,S} = W_u mlp_in (use_in_out_mlp)
layers.L.down     (d_s, d)    W_{d,S} = down W_d
layers.L.input_norm, layers.L.post_attention_norm  (d_s,)  student RMSNorm gains (Gemma also
                  pre_feedforward_norm, post_feedforward_norm: lrc.families.Family.gains)
layers.L.gate_delta|up_delta  (I, d_s)  Delta added to W_{g,S} / W_{u,S} (mlp_train dense|core only)
layers.L.down_delta  (d_s, I)  Delta added to W_{d,S} (mlp_train dense|core only)
================  ==========  ==========================================================

L is the *teacher* layer index; layers in ``del_layers`` have no entry.
"""

from __future__ import annotations

import torch
from torch import nn

from lrc.config import LRCConfig
from lrc.mlp_train import MLP_KINDS, delta_name, delta_shape

# Projections stored as (d, d_s): contract the teacher matrix's input axis as W_T @ P.
IN_SIDE_D_BY_DS = ("q", "k", "v", "qkv", "mlp_in")
# All other projections (o, gate, up, down, embed, lm_head) are stored as (d_s, d): gate/up contract the input
# axis as W_T @ P^T; o/down contract the teacher matrix's output axis as P @ W_T (embed/head: E_T @ P^T on the
# hidden axis).
GAINS = ("input_norm", "post_attention_norm")
"""The gains of a Llama-like layer (the default); a family's own are ``lrc.families.Family.gains``."""
DELTAS = tuple(delta_name(k) for k in MLP_KINDS)


def layer_projection_names(lrc: LRCConfig) -> tuple[str, ...]:
    """Names of the projection matrices of one student layer for this variant."""
    attn = ("q", "k", "v", "o") if lrc.use_all_attn else ("qkv", "o")
    mlp = ("mlp_in", "down") if lrc.use_in_out_mlp else ("gate", "up", "down")
    return attn + mlp


class LayerProjections(nn.Module):
    """Projections and norm gains of one student layer (teacher layer L)."""

    def __init__(self, d: int, d_s: int, lrc: LRCConfig, intermediate: int | None = None,
                 gains: tuple[str, ...] = GAINS):
        super().__init__()
        for name in layer_projection_names(lrc):
            shape = (d, d_s) if name in IN_SIDE_D_BY_DS else (d_s, d)
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        for name in gains:
            self.register_parameter(name, nn.Parameter(torch.empty(d_s)))
        if lrc.mlp_train != "lrc":  # Dense- / CORE-LRC (lrc.mlp_train): registered after, so the RNG
            if intermediate is None:  # draws of the projections above are those of plain LRC
                raise ValueError(f"mlp_train={lrc.mlp_train!r} needs the teacher's intermediate_size")
            for kind in MLP_KINDS:
                self.register_parameter(delta_name(kind),
                                        nn.Parameter(torch.empty(delta_shape(kind, intermediate, d_s))))


class LRCProjections(nn.Module):
    """All trainable LRC tensors. ``reset_parameters`` draws N(0, init_std^2), sets gains to 1 and Deltas to 0.

    ``intermediate`` (the teacher's MLP width I) is needed only when ``lrc.mlp_train`` is dense or core; ``gains``:
    the names of a layer's trainable RMSNorm gains (the teacher family's, ``lrc.families.Family.gains``).
    """

    def __init__(self, d: int, d_s: int, kept_layers: list[int], lrc: LRCConfig, intermediate: int | None = None,
                 gains: tuple[str, ...] = GAINS):
        super().__init__()
        self.d, self.d_s = d, d_s
        self.gains = tuple(gains)
        self.embed = nn.Parameter(torch.empty(d_s, d))
        self.lm_head = None if lrc.tie_word_emb_proj else nn.Parameter(torch.empty(d_s, d))
        self.final_norm = nn.Parameter(torch.empty(d_s))
        self.layers = nn.ModuleDict({str(i): LayerProjections(d, d_s, lrc, intermediate, self.gains)
                                     for i in kept_layers})
        self.init_std = lrc.init_std
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in self.gains or name == "final_norm":
                p.fill_(1.0)
            elif leaf in DELTAS:
                p.zero_()  # no RNG draw: the projections are plain LRC's, whatever mlp_train
            else:
                p.normal_(0.0, self.init_std)


def official_names(lrc: LRCConfig, kept_layers: list[int]) -> dict[str, str]:
    """Map our parameter names to the official code's state-dict names (docs/METHOD.md §2)."""
    m = {"embed": "model.zoom.weight", "final_norm": "model.target_norm.weight"}
    if not lrc.tie_word_emb_proj:
        m["lm_head"] = "zoom_down.weight"
    attn = {"q": "zoom_q", "k": "zoom_k", "v": "zoom_v", "qkv": "zoom_up", "o": "zoom_down"}
    mlp = {"gate": "zoom_gate", "up": "zoom_up", "mlp_in": "zoom_up", "down": "zoom_down"}
    for i in kept_layers:
        p = f"model.layers.{i}"
        for n in layer_projection_names(lrc):
            off = f"{p}.self_attn.{attn[n]}.weight" if n in attn else f"{p}.mlp.{mlp[n]}.weight"
            m[f"layers.{i}.{n}"] = off
        m[f"layers.{i}.input_norm"] = f"{p}.target_input_layernorm.weight"
        m[f"layers.{i}.post_attention_norm"] = f"{p}.target_post_attention_layernorm.weight"
    return m
