"""Training diagnostics: effective rank of hidden states, condition numbers of the projections.

Logged by the trainer every ``--diagnostics_steps`` optimizer steps (``LRCTrainer._extra_logs``), beside the loss
terms, to trainer_state.json, tensorboard and wandb:

- ``erank-{student,teacher}-{mid,final}``: the entropy-based effective rank (Roy & Vetterli, 2007) of the
  hidden states of a fixed sample of tokens (the first micro-batch's first sequences), at the middle
  student layer's output (and the teacher layer it comes from) and after the final norm. RED (arXiv
  2605.29327) reports that a collapse of this rank in LRC-style students precedes the loss of multi-step
  reasoning; the teacher's value is the reference.
- ``cond-{kind}-max``, ``cond-median``: condition numbers sigma_max / sigma_min of the projection matrices
  (q, k, v, o, gate, up, down, ..., embed), the largest per kind and the median of all. A projection
  whose condition number grows without bound is collapsing onto fewer directions.
"""

from __future__ import annotations

import statistics

import torch
from torch import Tensor


def effective_rank(h: Tensor) -> float:
    """exp(entropy of the normalised singular values) of ``h`` (N, d): between 1 and min(N, d).

    Roy & Vetterli (2007): p_i = sigma_i / sum_j sigma_j, erank = exp(-sum_i p_i log p_i), in float64."""
    s = torch.linalg.svdvals(h.detach().double())
    s = s[s > 0]
    if s.numel() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def condition_numbers(named: dict[str, Tensor]) -> dict[str, float]:
    """sigma_max / sigma_min of each 2-D matrix (from the eigenvalues of its smaller fp64 Gram matrix)."""
    out = {}
    for name, w in named.items():
        w = w.detach().double()
        g = w.t() @ w if w.shape[0] >= w.shape[1] else w @ w.t()
        ev = torch.linalg.eigvalsh(g).clamp_min(0)
        out[name] = float((ev[-1] / ev[0]).sqrt()) if ev[0] > 0 else float("inf")
    return out


def projection_condition_summary(model) -> dict[str, float]:
    """``cond-{kind}-max`` per projection kind and ``cond-median`` over all projection matrices (not the Deltas)."""
    named = {n: p for n, p in model.projections.named_parameters() if p.dim() == 2 and not n.endswith("_delta")}
    cond = condition_numbers(named)
    by_kind: dict[str, list[float]] = {}
    for n, c in cond.items():
        by_kind.setdefault(n.rsplit(".", 1)[-1], []).append(c)
    out = {f"cond-{k}-max": max(v) for k, v in sorted(by_kind.items())}
    out["cond-median"] = statistics.median(cond.values())
    return out


@torch.no_grad()
def hidden_state_ranks(model, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, float]:
    """``erank-{student,teacher}-{mid,final}`` on the real tokens of ``input_ids`` (B, S) (an ``LRCModel``)."""
    mid = (len(model.kept_layers) - 1) // 2  # a student layer before the last; its output: hidden_states[mid + 1]
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    # the teacher's layer output by a hook, not output_hidden_states (which a sharded teacher's FSDP layers escape)
    got: dict[str, Tensor] = {}
    layer = model.teacher.get_submodule(f"{model.family.layers}.{model.kept_layers[mid]}")
    hook = layer.register_forward_hook(lambda mod, args, out: got.setdefault("mid", out[0] if isinstance(out, tuple)
                                                                              else out))
    try:
        t = model.teacher.get_submodule(model.family.backbone)(**kw)
    finally:
        hook.remove()
    s = model.student_backbone(model.student_weights(), output_hidden_states=True, **kw)
    keep = None if attention_mask is None else attention_mask.reshape(-1).bool()

    def rows(h: Tensor) -> Tensor:
        h = h.reshape(-1, h.shape[-1])
        return h if keep is None else h[keep]

    return {
        "erank-student-mid": effective_rank(rows(s.hidden_states[mid + 1])),
        "erank-teacher-mid": effective_rank(rows(got["mid"])),
        "erank-student-final": effective_rank(rows(s.last_hidden_state)),
        "erank-teacher-final": effective_rank(rows(t.last_hidden_state)),
    }
