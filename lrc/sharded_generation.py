"""Sharded generation: each data-parallel rank of a node generates only its share of the student's weights.

Every rank would otherwise compute the identical W_S = W_T P. With sharding, the ranks of a
node-local group split the matmul-generated student tensors between them (balanced by FLOPs,
``plan_shards``); each rank generates its own, then ``_GatherShards`` all-gathers them so every rank
runs the whole student. Cheap tensors (RMSNorm gains, teacher-kept norms and biases) are still
computed by every rank.

Backward (``_GatherShards.backward``): every rank holds dL_r/dW_S for *all* tensors; they are
reduce-scattered (summed) to their owners, and each owner pushes sum_r dL_r/dW through its share of
the generation. Projections that its share does not use get a zero local gradient, so that DDP's and
DeepSpeed's gradient hooks fire for every parameter on every rank, in the same order.

Why the update is exactly today's: the generation's backward J^T is linear. Today rank r's gradient of
projection P is J_P^T g_r and data-parallel averaging gives (1/N) sum_r J_P^T g_r. Sharded, the owner
of each tensor computes J_P^T (sum_r g_r) for its tensors and every other rank contributes 0 for
them, so the averaged gradient is (1/N) J_P^T sum_r g_r: the same, up to the order of floating-point
additions. The reduction runs in fp32 whatever the working dtype (``REDUCE_DTYPE``).

Gloo has no reduce-scatter: there the gradients are all-reduced and each rank keeps its slice (same
result, N times the traffic; CPU runs only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

REDUCE_DTYPE = torch.float32
"""dtype of the gradient reduce-scatter (the all-gather of weights stays in the working dtype)."""


@dataclass
class ShardPlan:
    """Who generates which student tensor, within one node-local process group."""

    group: object
    """The ``torch.distributed`` process group of the ranks sharing the work (one node)."""
    rank: int
    """This process's rank within ``group``."""
    size: int
    """Ranks in ``group``."""
    owner: dict[str, int]
    """Sharded student tensor name -> rank (in ``group``) that generates it."""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Shape of each sharded tensor."""
    flops: dict[str, float] = field(default_factory=dict)
    """Generation FLOPs (forward + backward) of each sharded tensor."""

    @property
    def order(self) -> list[str]:
        """The sharded names, grouped by owner (the all-gather layout)."""
        return [n for r in range(self.size) for n in self.names_of(r)]

    def generated_here(self, names: list[str]) -> list[str]:
        """Of the student's ``names``, those this rank generates: the unsharded ones, then its own share."""
        return [n for n in names if n not in self.owner] + self.names_of(self.rank)

    def names_of(self, rank: int) -> list[str]:
        return sorted(n for n, o in self.owner.items() if o == rank)

    def flops_per_rank(self) -> list[float]:
        out = [0.0] * self.size
        for n, r in self.owner.items():
            out[r] += self.flops.get(n, 0.0)
        return out


def generation_flops(shapes: Mapping[str, tuple[int, ...]], inner: int) -> dict[str, float]:
    """FLOPs of generating each matrix (forward 2 m n k, backward to the projection 2 m n k; k = ``inner``,
    the teacher's hidden size, the contraction dimension of every LRC product)."""
    return {n: 4.0 * float(torch.Size(s).numel()) * inner for n, s in shapes.items()}


def plan_shards(flops: Mapping[str, float], size: int) -> dict[str, int]:
    """Longest-processing-time assignment: biggest tensor first, to the least loaded rank (ties: lowest rank,
    names in order), so every rank computes the same plan."""
    load = [0.0] * size
    owner: dict[str, int] = {}
    for n in sorted(flops, key=lambda n: (-flops[n], n)):
        r = min(range(size), key=lambda r: (load[r], r))
        owner[n] = r
        load[r] += flops[n]
    return owner


def _split(flat: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    out, i = [], 0
    for s in shapes:
        k = s.numel()
        out.append(flat[i:i + k].view(s))
        i += k
    return out


class _GatherShards(torch.autograd.Function):
    """All-gather the owned tensors (forward); reduce-scatter their gradients and push them through this rank's
    share of the generation (backward).

    Inputs: ``plan``, ``shapes`` (every sharded name), ``owned`` (this rank's generated tensors in
    ``plan.names_of(plan.rank)`` order, with their autograd graph), then *every* trainable parameter. Output:
    every sharded tensor in ``plan.order``.

    The owned tensors are handed over as a plain list, not as autograd inputs: their generation graph is
    reached only from ``backward`` (``torch.autograd.grad``), and every parameter gets its gradient from this
    one node, zero where this rank's share does not use it. So the autograd graph, and the order in which
    the parameters' gradient hooks fire, are the same on every rank, as DeepSpeed ZeRO's gradient buckets
    require (they are packed in hook order)."""

    @staticmethod
    def forward(ctx, plan: ShardPlan, shapes: dict[str, torch.Size], owned: list[Tensor], *params: Tensor):
        per_rank = [plan.names_of(r) for r in range(plan.size)]
        sizes = [sum(shapes[n].numel() for n in names) for names in per_rank]
        width = max(sizes)
        dtype, device = owned[0].dtype, owned[0].device
        buf = torch.empty(width, dtype=dtype, device=device)
        torch.cat([t.detach().reshape(-1) for t in owned], out=buf[:sizes[plan.rank]])
        buf[sizes[plan.rank]:].zero_()
        full = torch.empty(plan.size * width, dtype=dtype, device=device)
        _all_gather(full, buf, plan)
        out = []
        for r, names in enumerate(per_rank):
            out.extend(_split(full[r * width: r * width + sizes[r]], [shapes[n] for n in names]))
        ctx.plan, ctx.shapes, ctx.sizes, ctx.width, ctx.per_rank = plan, shapes, sizes, width, per_rank
        ctx.owned = owned
        ctx.save_for_backward(*params)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        plan, width, owned = ctx.plan, ctx.width, ctx.owned
        ctx.owned = None
        params = ctx.saved_tensors
        full = torch.zeros(plan.size * width, dtype=REDUCE_DTYPE, device=owned[0].device)
        i = 0
        for r, per in enumerate(ctx.per_rank):
            pos = r * width
            for n in per:
                k = ctx.shapes[n].numel()
                if grads[i] is not None:
                    full[pos:pos + k].copy_(grads[i].reshape(-1))
                pos += k
                i += 1
        mine = _reduce_scatter(full, width, plan)[:ctx.sizes[plan.rank]]
        sums = _split(mine, [ctx.shapes[n] for n in ctx.per_rank[plan.rank]])
        with torch.enable_grad():
            got = torch.autograd.grad(owned, params, [g.to(t.dtype) for g, t in zip(sums, owned)], allow_unused=True)
        return (None, None, None, *[torch.zeros_like(p) if g is None else g for g, p in zip(got, params)])


def _all_gather(full: Tensor, mine: Tensor, plan: ShardPlan) -> None:
    if dist.get_backend(plan.group) == "gloo":
        dist.all_gather(list(full.chunk(plan.size)), mine, group=plan.group)
    else:
        dist.all_gather_into_tensor(full, mine, group=plan.group)


def _reduce_scatter(full: Tensor, width: int, plan: ShardPlan) -> Tensor:
    """Sum ``full`` (size x width) over the group; return this rank's row."""
    if dist.get_backend(plan.group) == "gloo":  # no reduce-scatter in gloo: all-reduce, keep the slice
        dist.all_reduce(full, group=plan.group)
        return full[plan.rank * width:(plan.rank + 1) * width]
    out = torch.empty(width, dtype=full.dtype, device=full.device)
    dist.reduce_scatter_tensor(out, full, group=plan.group)
    return out


def generate_sharded(generate: Callable[[list[str]], dict[str, Tensor]], names: list[str], plan: ShardPlan,
                     params: list[Tensor]) -> dict[str, Tensor]:
    """The student's weights (every name in ``names``) with the sharded ones generated by their owners.

    ``generate(subset)`` generates the named tensors (``lrc.generate.generate_student_weights``);
    ``params``: every trainable tensor, in the same order on every rank. A collective: every rank of
    ``plan.group`` calls it, and its backward, at the same point."""
    mine = plan.names_of(plan.rank)
    generated = generate(plan.generated_here(names))
    shapes = {n: torch.Size(s) for n, s in plan.shapes.items()}
    gathered = _GatherShards.apply(plan, shapes, [generated[n] for n in mine], *params)
    full = dict(zip(plan.order, gathered))
    return {n: full[n] if n in plan.owner else generated[n] for n in names}


def setup_sharded_generation(model, mode: str, world_size: int) -> str:
    """Give ``model`` a ``ShardPlan`` over this node's processes (``lrc.sharded_generation``) when ``mode`` (auto |
    on | off) and the launch call for it; returns what was decided, for the log.

    auto shards only with several NCCL (GPU) processes per node; on also shards gloo (CPU) processes. Never
    across nodes: the group is the node's consecutive ranks (``LOCAL_WORLD_SIZE``, as torchrun sets it). Every
    rank decides from the same facts, so all of them create the groups (a collective) or none does."""
    import os

    import torch.distributed as dist

    if mode == "off":
        return "not sharded (--shard_generation off)"
    if world_size < 2 or not dist.is_initialized():
        return "not sharded (one process)"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local < 2:
        return "not sharded (one process per node; generation is never sharded across nodes)"
    if mode == "auto" and dist.get_backend() != "nccl":
        return "not sharded (auto shards GPU processes only; --shard_generation on forces it)"
    if world_size % local:
        return f"not sharded (the world size {world_size} is not a multiple of {local} processes per node)"
    group, _ = dist.new_subgroups(group_size=local)
    plan = model.plan_sharded_generation(group, dist.get_rank(group), local)
    if plan is None:
        return f"not sharded (fewer student matrices than the {local} processes per node)"
    per_rank = plan.flops_per_rank()
    return (f"sharded over the {local} processes of this node: generation {max(per_rank) / 1e9:.3g} GFLOP per rank "
            f"per step instead of {sum(per_rank) / 1e9:.3g} (forward + backward)")
