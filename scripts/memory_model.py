#!/usr/bin/env python
"""Per-GPU memory and gather traffic of an LRC run with and without ``--shard_teacher``: the model of
docs/BENCHMARKS.md ("Teachers larger than one GPU"), as a table.

    python scripts/memory_model.py [--gpus 8] [--seq 2048] [--gas 1] [--nvlink-gbs 350]

Per GPU, bf16 teacher and student, fp32 master projections (DeepSpeed ZeRO-2 over the GPUs: bf16 working copy on
each, fp32 master + AdamW moments + gradient partitioned):

    peak = teacher / N (sharded) or teacher (whole)
         + gathered: 2 decoder layers (the one in use, the next prefetched)                       (sharded only)
         + the KL's logit exchange: 2 x 16 MiB (lrc.sharded_head; the head is never gathered)    (sharded only)
         + projections: 2 B x P + 16 B x P / N
         + generated student weights and their gradient: 2 x 2 B x S
         + activations: micro-batch x seq x A (teacher clone targets + student activations, bf16)
         + logit chunks: 4 x 1024 x V x 4 B

A is calibrated once on the measured H100 step (Llama-3.2-3B -> 1536, 4 x 2048: 66.4 GiB, docs/BENCHMARKS.md).
Gathers per optimizer step, bytes each GPU receives: teacher x (N - 1) / N x (GAS teacher forwards + 1 generation
backward), plus the attention output matrices twice per micro-batch (the teacher-space attn_out clone term); and
the KL's teacher logits, (N - 1) / N x micro-batch tokens x V x 2 B per micro-batch (each rank's tokens over the
other ranks' vocabulary slices). Step time: 40 % of the H100's 989 bf16 TFLOP/s on the step's FLOPs; the gathers
overlap with compute (prefetch), so the exposed overhead is max(0, gather time - compute time) and its upper bound,
with no overlap at all, is gather time / compute time; the logit exchange is not overlapped (it sits between the
loss's chunks), so its time counts whole.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 2 ** 30


@dataclass
class Shape:
    name: str
    d: int
    layers: int
    inter: int
    vocab: int
    heads: int
    kv: int
    tied: bool
    head_dim: int = 128

    def layer_params(self, d: int | None = None) -> int:
        """Weights of one decoder layer at residual width ``d`` (the teacher's by default)."""
        d = self.d if d is None else d
        q = self.heads * self.head_dim
        kv = self.kv * self.head_dim
        return d * q + 2 * d * kv + q * d + 3 * d * self.inter

    def params(self, d: int | None = None) -> int:
        d = self.d if d is None else d
        return self.layers * self.layer_params(d) + self.vocab * d * (1 if self.tied else 2)


TEACHERS = [
    Shape("Llama-3.2-3B", 3072, 28, 8192, 128256, 24, 8, True),
    Shape("Qwen2.5-7B", 3584, 28, 18944, 152064, 28, 4, False),
    Shape("Llama-3.1-8B", 4096, 32, 14336, 128256, 32, 8, False),
    Shape("Qwen2.5-14B", 5120, 48, 13824, 152064, 40, 8, False),
    Shape("Qwen2.5-32B", 5120, 64, 27648, 152064, 40, 8, False),
    Shape("Llama-3.3-70B", 8192, 80, 28672, 128256, 64, 8, False),
]


def projections(t: Shape, ds: int) -> int:
    """q, k, v, gate, up (d x d_s), o, down (d_s x d) per layer, and the tied embedding projection."""
    return t.layers * 7 * t.d * ds + t.d * ds


def activation_bytes_per_token(t: Shape, ds: int, k: float) -> float:
    """Teacher clone targets (q, k, v, o, gate, up, down outputs) + ``k`` x the student's (10 d_s + 4 I) per layer."""
    targets = t.heads * t.head_dim + 2 * t.kv * t.head_dim + 2 * t.d + 2 * t.inter
    return 2.0 * t.layers * (targets + k * (10 * ds + 4 * t.inter))


def fixed_bytes(t: Shape, ds: int, n: int, sharded: bool) -> float:
    teacher = 2.0 * t.params()
    gathered = 2.0 * 2 * t.layer_params() + 2 * 16 * 2**20 if sharded else 0.0
    p = projections(t, ds)
    return (teacher / n if sharded else teacher) + gathered + 2.0 * p + 16.0 * p / n + 4.0 * t.params(ds) \
        + 4 * 1024 * t.vocab * 4.0


def calibrate(measured_gib: float) -> float:
    """k such that Llama-3.2-3B -> 1536 at 4 x 2048 on one GPU (no ZeRO: 16 B per projection parameter) gives the
    measured peak: 66.4 GiB, 39.9 GiB with --gradient_checkpointing (docs/TRAINING.md)."""
    t, ds, tokens = TEACHERS[0], 1536, 4 * 2048
    p = projections(t, ds)
    fixed = 2.0 * t.params() + 16.0 * p + 4.0 * t.params(ds) + 4 * 1024 * t.vocab * 4.0
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if fixed + tokens * activation_bytes_per_token(t, ds, mid) > measured_gib * GIB:
            hi = mid
        else:
            lo = mid
    return lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--gas", type=int, default=1)
    ap.add_argument("--memory-gib", type=float, nargs="+", default=[80.0, 141.0])
    ap.add_argument("--nvlink-gbs", type=float, default=350.0, help="all-gather bus bandwidth per GPU, GB/s")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="calibrate on the checkpointed step")
    a = ap.parse_args()
    k, n = calibrate(39.9 if a.gradient_checkpointing else 66.4), a.gpus
    print(f"activation calibration k = {k:.2f}{' (gradient checkpointing)' if a.gradient_checkpointing else ''}; "
          f"{n} GPUs, seq {a.seq}, GAS {a.gas}, student width d/2\n")
    cols = " | ".join(f"{m:g} GB: whole / sharded" for m in a.memory_gib)
    print(f"| teacher | bf16 GB | student params | {cols} | received per step (GB/GPU): gathers + logits | "
          f"gathers / compute; logits / compute, at the largest sharded micro-batch on {a.memory_gib[0]:g} GB |")
    print("|---|---|---|" + "---|" * len(a.memory_gib) + "---|---|")
    for t in TEACHERS:
        ds = t.d // 2
        per_seq = a.seq * activation_bytes_per_token(t, ds, k)
        fits, largest = [], None
        for mem in a.memory_gib:
            row = []
            for sharded in (False, True):
                free = mem * 1e9 * 0.95 - fixed_bytes(t, ds, n, sharded)
                row.append(max(0, int(free // per_seq)))
            fits.append(f"{row[0]} / {row[1]}")
            largest = row[1] if largest is None else largest
        teacher = 2.0 * t.params()
        o_bytes = 2.0 * t.layers * t.d * t.heads * t.head_dim
        recv = (n - 1) / n * (teacher * (a.gas + 1) + a.gas * 2 * o_bytes)
        b = max(1, largest)
        tokens = b * a.seq * a.gas
        logits = (n - 1) / n * tokens * t.vocab * 2.0
        flops = 2 * t.params() * tokens + 6 * t.params(ds) * tokens + 4 * ds * t.params()
        compute = flops / (0.4 * 989e12)
        gather, exchange = recv / (a.nvlink_gbs * 1e9), logits / (a.nvlink_gbs * 1e9)
        print(f"| {t.name} | {teacher / 1e9:.1f} | {t.params(ds) / 1e9:.1f}B | " + " | ".join(fits)
              + f" | {recv / 1e9:.0f} + {logits / 1e9:.0f} | {gather:.2f} s / {compute:.2f} s = "
              f"{100 * gather / compute:.0f} %; {exchange:.3f} s = {100 * exchange / compute:.1f} %"
              + ("" if largest else " (at 1: does not fit)") + " |")
    print("\nwhole / sharded: micro-batches of --seq tokens per GPU that fit (0: not even one); gathers / compute: the "
          "step's gather time over NVLink against its compute time, the overhead if nothing overlapped (prefetch "
          "overlaps the next layer's gather with this one's compute); logits / compute: the KL's logit exchange, "
          "not overlapped")


if __name__ == "__main__":
    main()
