"""One rank of tests/test_sharded_teacher.py::test_sharded_model_equals_whole (run by torch.distributed.run, gloo).

For each case: an ``LRCModel`` on the whole teacher and one on the teacher sharded over the ranks (loaded from its
safetensors files, ``lrc.sharded_teacher``) take 3 SGD steps on this rank's own batches; every step's loss, clone
terms and projection gradients are recorded, with how many of the teacher's elements this rank held: after loading,
at every gather during the steps and after each loss. Writes ``OUT/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tiny import VOCAB, save_teacher, tiny_teacher  # noqa: E402

from lrc.config import LRCConfig  # noqa: E402
from lrc.model import LRCModel  # noqa: E402
from lrc.sharded_teacher import load_sharded_teacher, teacher_mesh  # noqa: E402
from lrc.teacher import load_teacher_config  # noqa: E402

CASES = {
    "llama_untied_gqa": dict(family="llama", tied=False, lrc={}),
    "qwen2_tied_bias": dict(family="qwen2", tied=True, lrc={}),
    "llama_gas2_core": dict(family="llama", tied=False, lrc={"mlp_train": "core"}, gas=2),
    "qwen2_gas2_dense": dict(family="qwen2", tied=True, lrc={"mlp_train": "dense"}, gas=2),
    "qwen3_inout_checkpointing": dict(family="qwen3", tied=True, lrc={"use_in_out_mlp": True, "use_all_attn": False},
                                      checkpointing=True),
    "gemma2_untied": dict(family="gemma2", tied=False, lrc={}),
    # the ranks bring different numbers of tokens (2 x 12 and 2 x 7) in 8-token chunks of the loss: 3 exchanges of
    # the teacher's logits, the shorter rank taking part in the last with none of its own
    "llama_uneven_chunks": dict(family="llama", tied=True, lrc={"logits_chunk_tokens": 8},
                                lengths=(12, 7)),
}


def run_case(name: str, case: dict, out: Path, rank: int) -> dict:
    path = out / f"teacher_{name}"
    if rank == 0:
        save_teacher(tiny_teacher(case["family"], tied=case["tied"], layers=3), path)
    dist.barrier()
    cfg = LRCConfig(target_hidden_size=32, **case["lrc"])
    torch.manual_seed(0)
    whole = LRCModel(tiny_teacher(case["family"], tied=case["tied"], layers=3), cfg)
    units = load_sharded_teacher(str(path), load_teacher_config(str(path)), teacher_mesh(torch.device("cpu")),
                                 torch.float32, torch.device("cpu"), "eager", cfg.teacher_space_linears())
    after_load = {"local": units.local_numel(), "gathered": units.gathered_numel(), "total": units.total_numel()}
    sharded = LRCModel(units.teacher, cfg, units=units)
    sharded.projections.load_state_dict(whole.projections.state_dict())
    if case.get("checkpointing"):
        whole.enable_gradient_checkpointing()
        sharded.enable_gradient_checkpointing()
    held: list[int] = []  # elements of the teacher held whole at each gather, during the steps

    def record(*_):
        held.append(units.gathered_numel())

    for unit in units.order:  # FSDP's own gathers, for the teacher's forward (its hooks run first)
        units.module(unit).register_forward_pre_hook(record)
    gathered = units.gathered

    @contextmanager
    def gathered_and_recorded(unit, prefetch=None):
        with gathered(unit, prefetch) as tensors:
            record()
            yield tensors

    units.gathered = gathered_and_recorded  # this test's own instrumentation of one object
    units_numel = {u: sum(p.numel() for p in units.params(u).values()) for u in units.order}
    gas = case.get("gas", 1)
    steps, after_loss = [], []
    for step in range(3):
        got = {}
        for label, m in (("whole", whole), ("sharded", sharded)):
            g = torch.Generator().manual_seed(100 * step + rank)
            m.zero_grad()
            for mb in range(gas):
                ids = torch.randint(3, VOCAB, (2, case.get("lengths", (12, 12))[rank]), generator=g)
                o = m(ids, window_end=(mb == gas - 1) if gas > 1 else None)
                if m is sharded:  # after the loss's forward, the step's memory peak: nothing gathered
                    after_loss.append(units.gathered_numel())
                (o.loss / gas).backward()
            got[label] = {"loss": o.loss.item(), "terms": {k: v.item() for k, v in o.terms.items()},
                          "grads": {n: p.grad.flatten().tolist() for n, p in m.projections.named_parameters()}}
        steps.append(got)
        with torch.no_grad():
            for m in (whole, sharded):
                for p in m.projections.parameters():
                    p -= 0.05 * p.grad
    units.gathered = gathered
    names = [n for n, _ in units.teacher.named_parameters()]
    return {"after_load": after_load, "held_max": max(held), "after_loss_max": max(after_loss),
            "units_numel": units_numel, "steps": steps,
            "gathered_at_end": units.gathered_numel(), "teacher_registered": any(
                n.startswith("teacher.") for n, _ in sharded.named_parameters()), "names": names}


def head_exchange(rank: int) -> dict:
    """``ShardedHeadLogits`` against ``h @ U^T`` on the whole head: V = 37 (19 and 18 rows), this rank's 11 or 4
    tokens in chunks of 5, exchanged in blocks of 2 rows (fp32) and of 5 (bf16); the largest difference per case."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from lrc.sharded_head import ShardedHeadLogits

    mesh = teacher_mesh(torch.device("cpu"))
    got = {}
    for dtype, exchange_bytes in ((torch.float32, 2 * 37 * 4), (torch.bfloat16, 10 ** 6)):
        g = torch.Generator().manual_seed(7)
        whole = torch.randn(37, 16, generator=g).to(dtype)  # the same head on every rank
        head = distribute_tensor(whole, mesh, [Shard(0)])
        assert isinstance(head, DTensor)
        src = ShardedHeadLogits(head.to_local(), 37, mesh.get_group(), rank, 2, exchange_bytes)
        h = torch.randn(11 if rank == 0 else 4, 16, generator=torch.Generator().manual_seed(rank)).to(dtype)
        chunk, rows = 5, src.rows_everywhere(h.shape[0])
        out = torch.full((h.shape[0], 37), float("nan"))
        for a in range(0, rows, chunk):
            b = min(a + chunk, h.shape[0])
            src.logits_into(out[a:b] if b > a else None, h[a:b] if b > a else h[:0], chunk)
        ref = (h @ whole.t()).float()
        got[str(dtype)] = {"rows": rows, "max_diff": (out - ref).abs().max().item(),
                           "finite": bool(out.isfinite().all())}
    return got


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {name: run_case(name, case, out, rank) for name, case in CASES.items()}
    results["head_exchange"] = head_exchange(rank)
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
