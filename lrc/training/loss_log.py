"""What a training run logs, and its non-finite guard's record: ``LossMeter`` (window sums of every loss component on
the device, and the first non-finite micro-step), the console callbacks (per-layer keys left out of the printed
line) and ``NonFiniteLossError``. ``lrc.training.trainer.DistillTrainer`` reads the meter at logging steps and before saves."""

from __future__ import annotations

import re

import torch
from torch import Tensor
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lrc.errors import NonFiniteError
from lrc.model import LRCOutput

LAYER_KEY_RE = re.compile(r"^L\d+-")
"""Per-layer log keys (``L3-mlp-up-loss``)."""


class NonFiniteLossError(NonFiniteError, RuntimeError):
    """The loss (or one of its components) became NaN or infinite; training stopped, nothing was saved."""



class LossMeter:
    """Window sums of the loss components, kept on the device (no host sync until ``read``).

    Each ``add`` stacks one micro-step's components into a vector of fixed layout (``keys``), adds it
    to the window sum, and, the first time any entry is non-finite, records the optimizer step and
    which entries were bad.
    """

    def __init__(self) -> None:
        self.keys: list[str] | None = None
        self.sum: Tensor | None = None
        self.count = 0  # micro-steps in the window (host int, no sync)
        self.first_bad_step: Tensor | None = None  # () int64, -1 while everything was finite
        self.bad_at_first: Tensor | None = None  # (K,) bool: the non-finite entries at that micro-step

    @staticmethod
    def flatten(out: LRCOutput) -> tuple[list[str], list[Tensor]]:
        keys = ["loss", "ce", "kl", "clone"]
        vals = [out.loss.detach(), out.ce, out.kl, out.clone]
        for name in sorted(out.terms):
            keys.append(name)
            vals.append(out.terms[name])
        for (layer, name) in sorted(out.layer_terms):
            keys.append(f"L{layer}-{name}")
            vals.append(out.layer_terms[(layer, name)])
        return keys, vals

    def add(self, out: LRCOutput, step: int) -> None:
        self.add_values(*self.flatten(out), step)

    def add_values(self, keys: list[str], vals: list[Tensor], step: int) -> None:
        """One micro-step's named scalars (the same ``keys`` every time), for optimizer step ``step``."""
        vec = torch.stack([v.float().reshape(()) for v in vals])  # (K,)
        if self.keys is None:
            self.keys = keys
            self.sum = torch.zeros_like(vec)
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=vec.device)
            self.bad_at_first = torch.zeros(vec.shape, dtype=torch.bool, device=vec.device)
        elif keys != self.keys:
            raise RuntimeError(f"the set of logged loss terms changed between steps: {self.keys} -> {keys}")
        self.sum += vec
        self.count += 1
        bad = ~torch.isfinite(vec)
        first = (self.first_bad_step < 0) & bad.any()
        self.first_bad_step = torch.where(first, step, self.first_bad_step)
        self.bad_at_first = torch.where(first, bad, self.bad_at_first)

    def first_nonfinite(self, accelerator) -> tuple[int, list[str]] | None:
        """One sync (and one gather across processes): the first optimizer step at which any process saw a
        non-finite entry, with the entries that were non-finite there; None while everything was finite."""
        if self.keys is None:
            return None
        info = torch.cat([self.first_bad_step.reshape(1).float(), self.bad_at_first.float()])[None]  # (1, 1+K)
        if accelerator.num_processes > 1:
            info = accelerator.gather(info)  # (world, 1+K)
        rows = [r for r in info.tolist() if r[0] >= 0]
        if not rows:
            return None
        step, *flags = min(rows, key=lambda r: r[0])
        return int(step), [k for k, f in zip(self.keys, flags) if f]

    def reset_window(self) -> None:
        if self.sum is not None:
            self.sum.zero_()
        self.count = 0


# ---------------------------------------------------------------------------------------------- console
class _CompactLogs:
    """Console output only: per-layer keys (``L3-mlp-up-loss``) stay out of the printed line; they still
    reach ``log_history``, wandb and tensorboard."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: v for k, v in (logs or {}).items() if not LAYER_KEY_RE.match(k)}
        return super().on_log(args, state, control, logs=shown, **kwargs)


class CompactProgressCallback(_CompactLogs, ProgressCallback):
    pass


class CompactPrinterCallback(_CompactLogs, PrinterCallback):
    pass


def use_compact_console(trainer) -> None:
    """Replace HF's console callbacks of ``trainer`` by the compact ones."""
    for old, new in ((ProgressCallback, CompactProgressCallback), (PrinterCallback, CompactPrinterCallback)):
        if trainer.pop_callback(old) is not None:
            trainer.add_callback(new)
