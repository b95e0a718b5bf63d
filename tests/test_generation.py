"""When and where student weights are generated: once per optimizer step under gradient accumulation
(``lrc.generation_window``) and sharded over the data-parallel ranks of a node (``lrc.sharded_generation``).

Both are exact: the same losses and the same projection gradients as generating the weights for every
micro-batch on every rank, to float tolerance. The 2-process checks run two gloo processes on the CPU.
The trainer-level checks (losses and weights after 3 optimizer steps, DDP and ZeRO-2, gradient
checkpointing, a signal mid-window) are in test_trainer.py and test_run_contract.py.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny import VOCAB, tiny_teacher
from trainer_helpers import free_port

from lrc.config import LRCConfig
from lrc.generation_window import StaleWindowError
from lrc.model import LRCModel
from lrc.sharded_generation import generation_flops, plan_shards


def _model(mode: str = "lrc", family: str = "qwen2", tied: bool = False, **lrc) -> LRCModel:
    torch.manual_seed(0)
    m = LRCModel(tiny_teacher(family, tied=tied, layers=2), LRCConfig(target_hidden_size=32, mlp_train=mode, **lrc))
    with torch.no_grad():  # non-zero Deltas, so that their gradients matter
        for n, p in m.projections.named_parameters():
            if n.endswith("_delta"):
                p.normal_(0.0, 0.02)
    return m


def _accumulate(m: LRCModel, ids: torch.Tensor, window: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """GAS = len(ids): losses of each micro-batch and the accumulated projection gradients."""
    m.zero_grad(set_to_none=True)
    k, losses = len(ids), []
    for i in range(k):
        out = m(ids[i], window_end=(i == k - 1) if window else None)
        (out.loss / k).backward()
        losses.append(out.loss.item())
    return losses, {n: p.grad.clone() for n, p in m.projections.named_parameters()}


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = a[k].abs().max().clamp_min(1e-12)
        assert ((a[k] - b[k]).abs().max() / scale).item() < rel, k


@pytest.mark.parametrize("mode, family", [("lrc", "qwen2"), ("core", "llama"), ("dense", "qwen3")])
def test_once_per_step_equals_per_micro_batch(mode, family):
    """GAS 4: one generation per window gives the same losses and accumulated gradients, for every projection
    (and Delta), as generating the weights for each micro-batch."""
    m = _model(mode, family)
    ids = torch.randint(0, VOCAB, (4, 2, 12))
    calls = []
    inner = m._generate_for_training
    m._generate_for_training = lambda: calls.append(1) or inner()
    la, ga = _accumulate(m, ids, window=False)
    assert len(calls) == 4
    lb, gb = _accumulate(m, ids, window=True)
    assert len(calls) == 5  # one more generation for the whole window
    assert la == pytest.approx(lb, rel=1e-6)
    _close(ga, gb)


def test_inside_the_window_the_generation_is_not_backpropagated():
    """Micro-batches before the last leave the projections' gradients untouched except where the loss uses a
    projection directly (the FFN-output clone target C_d f_T); the last one fills every gradient."""
    m = _model()
    ids = torch.randint(0, VOCAB, (2, 2, 12))
    m(ids[0], window_end=False).loss.backward()
    touched = {n for n, p in m.projections.named_parameters() if p.grad is not None}
    assert touched == {f"layers.{L}.down" for L in m.kept_layers}
    m(ids[1], window_end=True).loss.backward()
    assert all(p.grad is not None for p in m.projections.parameters())


def test_gradient_checkpointing_inside_a_window():
    m, ref = _model(), _model()
    m.enable_gradient_checkpointing()
    ids = torch.randint(0, VOCAB, (3, 2, 12))
    la, ga = _accumulate(ref, ids, window=False)
    lb, gb = _accumulate(m, ids, window=True)
    assert la == pytest.approx(lb, rel=1e-6)
    _close(ga, gb)


def test_an_optimizer_step_inside_a_window_is_refused():
    m = _model()
    ids = torch.randint(0, VOCAB, (2, 2, 12))
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1)
    m(ids[0], window_end=False).loss.backward()
    opt.step()
    with pytest.raises(StaleWindowError, match="projections changed inside a gradient-accumulation window"):
        m(ids[1], window_end=True)
    m(ids[1]).loss.backward()  # a forward outside a window drops the stale one


def test_shard_plan_balances_flops_deterministically():
    m = _model(tied=True, family="llama")
    shapes = {n: tuple(p.shape) for n, p in m.student.named_parameters() if p.dim() == 2}
    flops = generation_flops(shapes, 64)
    for size in (2, 3, 4):
        owner = plan_shards(flops, size)
        assert owner == plan_shards(dict(reversed(list(flops.items()))), size)  # order-independent
        assert set(owner) == set(flops) and set(owner.values()) == set(range(size))
        load = [sum(f for n, f in flops.items() if owner[n] == r) for r in range(size)]
        assert max(load) - min(load) <= max(flops.values())  # LPT: within one tensor of each other
    load = [sum(f for n, f in flops.items() if plan_shards(flops, 2)[n] == r) for r in range(2)]
    assert max(load) <= 0.55 * sum(load)  # two ranks: about half each


# ---------------------------------------------------------------------------------------------- 2 processes
def _worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from lrc.training.trainer import setup_sharded_generation

        out = {}
        for mode in ("lrc", "core"):
            m = _model(mode, family="llama", tied=True)
            ids = torch.randint(0, VOCAB, (2, 3, 2, 12), generator=torch.Generator().manual_seed(5))[rank]

            def averaged(window: bool) -> dict[str, torch.Tensor]:
                _, g = _accumulate(m, ids, window)
                for v in g.values():
                    dist.all_reduce(v)
                    v /= 2
                return g

            ref = averaged(False)
            notes = {f: setup_sharded_generation(m, f, 2) for f in ("off", "auto")}
            assert m.shard_plan is None, notes
            notes["on"] = setup_sharded_generation(m, "on", 2)
            plan = m.shard_plan
            out[mode] = dict(ref=ref, sharded=averaged(False), sharded_window=averaged(True), notes=notes,
                             flops=plan.flops_per_rank(), owned=plan.names_of(rank))
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_two_process_sharded_generation_equals_unsharded():
    """Two gloo processes, different data: with the generation sharded (each rank generates about half the
    student's matrices), the data-parallel averaged gradients equal the unsharded ones, with and without a
    GAS-3 window; --shard_generation off and auto (gloo) leave it unsharded."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(int(free_port()), results), nprocs=2)
        results = dict(results)
    for mode in ("lrc", "core"):
        r0, r1 = results[0][mode], results[1][mode]
        for r in (r0, r1):
            _close(r["ref"], r["sharded"])
            _close(r["ref"], r["sharded_window"])
        _close(r0["sharded"], r1["sharded"], rel=1e-7)
        assert r0["notes"]["off"] == "not sharded (--shard_generation off)"
        assert "auto shards GPU processes only" in r0["notes"]["auto"]
        assert r0["notes"]["on"].startswith("sharded over the 2 processes of this node")
        assert set(r0["owned"]).isdisjoint(r1["owned"]) and r0["owned"] and r1["owned"]
        assert max(r0["flops"]) <= 0.55 * sum(r0["flops"])  # each rank generates about half
