"""When student weights are generated: once per optimizer step (an accumulation window), not per micro-batch.

With k micro-batches per optimizer step (gradient accumulation) the projections do not change between
micro-batches, so W_S = W_T P is the same tensor k times. ``GenerationWindow`` generates it once, at
the window's first micro-batch, keeping the generation's autograd graph:

- micro-batches 1 .. k-1 run on *leaf* copies of the weights (``W.detach().requires_grad_()``);
  their backward passes stop there and accumulate dL_i/dW_S into ``leaf.grad`` (no projection is
  touched, no gradient hook of DDP / DeepSpeed fires);
- micro-batch k runs on ``_AddHeldGrad(W, leaf)``: the identity in forward, and in backward it hands
  the generation graph ``dL_k/dW_S + leaf.grad`` = the window's whole dL/dW_S. The generation's
  backward therefore runs once, inside micro-batch k's own ``backward()``, before clipping and the
  optimizer step; DDP's all-reduce and DeepSpeed's reduce hooks fire there, exactly as for an
  accumulation boundary today.

Why it is exact: the generation is linear in the upstream gradient, so
sum_i J^T g_i = J^T (sum_i g_i); only the order of floating-point additions changes (the sum now
happens on W_S, then one backward, instead of k backwards summed on the projections).

Memory: W_S and its gradient (``leaf.grad``) live across the window (two student-sized tensors in the
working dtype); the per-micro-batch path holds them only during each micro-batch. The generation graph
saves nothing extra: its inputs are the frozen teacher tensors and the projections themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class StaleWindowError(RuntimeError):
    """The projections changed while a generation window was open (an optimizer step inside the window)."""


class _AddHeldGrad(torch.autograd.Function):
    """Identity on ``w`` in forward; in backward adds the gradient held in ``leaf.grad`` to ``w``'s."""

    @staticmethod
    def forward(ctx, w: Tensor, leaf: Tensor) -> Tensor:
        ctx.leaf = leaf
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g: Tensor):
        held = ctx.leaf.grad
        ctx.leaf = None
        return (g if held is None else g + held.to(g.dtype)), None


def _versions(params: Iterable[Tensor]) -> tuple[int, ...]:
    return tuple(p._version for p in params)


class GenerationWindow:
    """The generated weights of one accumulation window (module docstring).

    ``weights(last)`` returns the weights for one micro-batch: the leaves, or, for the window's last
    micro-batch, the graph-connected weights that carry the held gradient back through the generation
    (after which the window is closed).
    """

    def __init__(self, generated: dict[str, Tensor], params: list[Tensor]):
        """``generated``: name -> tensor from the generation, with autograd; ``params``: the trainable
        tensors it was generated from (their in-place versions are checked at every reuse)."""
        self._graph = generated
        self._params = params
        self._opened_at = _versions(params)
        self.leaves = {n: (w.detach().requires_grad_() if w.requires_grad else w) for n, w in generated.items()}

    def check_fresh(self) -> None:
        """Raise ``StaleWindowError`` if a trainable tensor was modified in place since the window opened."""
        if _versions(self._params) != self._opened_at:
            raise StaleWindowError("the projections changed inside a gradient-accumulation window (an optimizer "
                                   "step before its last micro-batch); generated weights would be stale")

    def weights(self, last: bool) -> dict[str, Tensor]:
        self.check_fresh()
        if not last:
            return self.leaves
        out = {}
        for n, w in self._graph.items():
            leaf = self.leaves[n]
            out[n] = _AddHeldGrad.apply(w, leaf) if w.requires_grad else w
        self._graph, self.leaves = {}, {}
        return out
