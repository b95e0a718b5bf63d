"""Which positions of a batch count, and the next-token targets: shared by LRC and the baselines.

A position counts iff its ``attention_mask`` is 1 and its label is not -100. Position t predicts
``labels[t + 1]``; the last position of each row, and any position whose successor does not count,
has no target (-100). Packed data (no mask, no labels) takes the mask-free path. No host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LossPositions:
    valid: Tensor
    """(B, S) bool: the position is a real token whose label counts."""
    mask: Tensor | None
    """``valid`` when the batch carried a mask or labels, else None (packed data: everything counts)."""
    targets: Tensor
    """(B, S) int64 next-token targets, -100 where there is none."""
    n_ce: Tensor
    """() fp32: number of positions with a target (at least 1)."""
    kl_divisor: Tensor
    """() fp32: what the summed KL is divided by: B (``sequence_sum``) or the counted tokens (``token_mean``)."""


def loss_positions(input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor | None,
                   kl_reduction: str = "sequence_sum") -> LossPositions:
    """Targets, masks and divisors of one (B, S) batch (see the module docstring)."""
    B = input_ids.shape[0]
    masked = attention_mask is not None or labels is not None
    labels = input_ids if labels is None else labels
    valid = labels != -100
    if attention_mask is not None:
        valid = valid & attention_mask.bool()
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = torch.where(valid[:, 1:] & valid[:, :-1], labels[:, 1:], -100)
    n_ce = (targets >= 0).sum().clamp_min(1).float()
    if kl_reduction == "sequence_sum":
        kl_div = torch.tensor(float(B), device=input_ids.device)
    else:
        kl_div = valid.sum().clamp_min(1).float()
    return LossPositions(valid=valid, mask=valid if masked else None, targets=targets, n_ce=n_ce, kl_divisor=kl_div)
