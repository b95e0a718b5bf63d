"""Step-speed bound of LRC: teacher forward (a), ordinary student training step (b), LRC step (c).

The FLOP model of an LRC step is (a) + (b): the teacher must run, and the student must be trained.
This measures, in one process, interleaved round-robin after warm-up, the tokens/s of each, the
ratio c / (a + b), and the peak memory of each phase (``torch.cuda.max_memory_allocated`` on GPU,
sampled RSS on CPU). ``--mlp-train dense,core`` adds the LRC step of Dense- / CORE-LRC (lrc.mlp_train)
and reports its time and memory as a ratio to plain LRC's. Ablations say where the rest goes: the LRC step without clone terms, without
KL, and the student-weight generation alone (forward + backward); they also time (b) with LRC's chunked
fused CE in place of HF's full-logit CE, to show how much the bound owes to HF's loss. ``--phases``
times the pieces of the LRC step itself. Besides wall time (median and best of the rounds), the
process CPU time of each phase is reported: on a shared machine it is less disturbed by other load.

    lrc bench --teacher smollm2-135m --target-hidden-size 288 --batch 4 --seq 256
    lrc bench --teacher llama-3.2-3b --target-hidden-size 1536 --batch 4 --seq 2048 --dtype bf16

``--teacher`` is a named shape (random weights: speed does not depend on values) or a model
directory (its config, random weights). ``--loss-memory`` also compares the peak memory of the
loss (head + KL + CE, forward + backward) with and without token chunking at the given vocab size.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import threading
import time
from datetime import date
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

from lrc.cli.options import OptionError, options, run_command
from lrc.config import LRCConfig
from lrc.losses import fused_logit_losses
from lrc.model import LRCModel
from lrc.sharded_generation import generation_flops

SHAPES = {
    "llama-3.2-3b": lambda: LlamaConfig(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
        head_dim=128, vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "qwen2.5-3b": lambda: Qwen2Config(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
        vocab_size=151936, tie_word_embeddings=True, rms_norm_eps=1e-6, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "smollm2-360m": lambda: LlamaConfig(
        hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
        head_dim=64, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
    "tinyllama-1.1b": lambda: LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
        head_dim=64, vocab_size=32000, tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "smollm2-135m": lambda: LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
}


class PeakMemory:
    """Peak memory during a block: CUDA allocator on GPU, sampled RSS (every 2 ms) on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = False
            self.peak = _rss()
            self._t = threading.Thread(target=self._sample, daemon=True)
            self._t.start()
        return self

    def _sample(self):
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop = True
            self._t.join()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _timed(fn, device) -> tuple[float, float]:
    """Wall and process CPU seconds of ``fn()``, the device synchronised before and after."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _round_line(r: int, total: int, times: dict[str, list[float]]) -> str:
    return (f"round {r + 1}/{total} (load {os.getloadavg()[0]:.2f}): "
            + ", ".join(f"{k}={v[-1]:.3f}s" for k, v in times.items() if v))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(args, device, dtype):
    cfg = SHAPES[args.teacher]() if args.teacher in SHAPES else AutoConfig.from_pretrained(args.teacher)
    cfg._attn_implementation = args.attn
    torch.manual_seed(0)
    with torch.device(device):
        teacher = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=args.attn).eval()
    teacher.requires_grad_(False)
    lrc_kw = dict(target_hidden_size=args.target_hidden_size, logits_chunk_tokens=args.chunk_tokens)
    lrc = LRCModel(teacher, LRCConfig(**lrc_kw)).to(dtype)
    if args.gradient_checkpointing:
        lrc.enable_gradient_checkpointing()
    with torch.device(device):
        student = AutoModelForCausalLM.from_config(lrc.student_config, dtype=dtype, attn_implementation=args.attn)
    variants = {
        "no_clone": LRCModel(teacher, LRCConfig(**lrc_kw, ban_losses=LRCConfig(**lrc_kw).clone_terms())).to(dtype),
        "no_kl": LRCModel(teacher, LRCConfig(**lrc_kw, use_logits_loss=False)).to(dtype),
    } if args.ablations else {}
    for mode in [m for m in args.mlp_train.split(",") if m]:  # Dense- / CORE-LRC (lrc.mlp_train)
        t0 = time.perf_counter()
        variants[mode] = LRCModel(teacher, LRCConfig(**lrc_kw, mlp_train=mode)).to(dtype)
        if args.gradient_checkpointing:
            variants[mode].enable_gradient_checkpointing()
        print(f"--mlp_train {mode}: built in {time.perf_counter() - t0:.1f}s (core: the fp64 SVD of every MLP matrix)",
              flush=True)
    return teacher, lrc, student, variants


@options(group="what to time")
class BenchOptions:
    """``lrc bench``'s flags."""

    teacher: str = "smollm2-135m"
    """a named shape: llama-3.2-3b | qwen2.5-3b | smollm2-135m (random weights: speed does not depend on values),
    or a model directory (its config, random weights)"""
    target_hidden_size: int = 288
    """student width d_s"""
    batch: int = 4
    """sequences per micro-batch"""
    seq: int = 256
    """tokens per sequence"""
    dtype: str | None = None
    """fp32 | bf16 (default: bf16 on GPU, fp32 on CPU)"""
    attn: str = "sdpa"
    """attention implementation (sdpa | eager | flash_attention_2)"""
    chunk_tokens: int = 1024
    """LRC logits chunk (tokens)"""
    gradient_checkpointing: bool = False
    """LRC step with gradient checkpointing"""
    warmup: int = 1
    """untimed rounds first"""
    iters: int = 3
    """timed rounds (each runs every phase once)"""
    ablations: bool = False
    """also time LRC without clone terms / without KL, the weight generation alone, and (b) with LRC's chunked
    fused CE instead of HF's"""
    mlp_train: str = ""
    """also time the LRC step with --mlp_train MODE (comma list: dense,core) and report its time and memory over
    plain LRC"""
    loss_memory: bool = False
    """peak memory of the loss, chunked vs unchunked"""
    loss_vocab: int = 128256
    """--loss_memory: vocabulary size"""
    loss_tokens: int = 3 * 2048
    """--loss_memory: tokens"""
    loss_softcap: float | None = None
    """--loss_memory: a final-logit soft-cap (Gemma 2: 30), applied to both models' logits"""
    flops: bool = False
    """also count the FLOPs of each phase (FLOP-model ratio)"""
    phases: bool = False
    """after the rounds, time the phases of the LRC step"""
    gas: int = 1
    """micro-batches per optimizer step: every phase runs GAS micro-batches and one optimizer step; the LRC step
    generates the weights once per step (and, for comparison, c_lrc_step_per_micro_batch once per micro-batch)"""
    nproc: int = 1
    """N > 1: N data-parallel processes (DDP; gloo on CPU, NCCL with one GPU each when there are N GPUs) time the
    LRC step with the weight generation sharded over them against unsharded, back to back, and count each rank's
    generation FLOPs"""
    threads: int | None = None
    """torch CPU threads (default: torch's)"""
    json: str | None = None
    """also write the results to this JSON file"""


def cli(argv: list[str] | None = None) -> int:
    """``lrc bench`` (flags: ``--help``; ``argv`` default: sys.argv[1:]); the exit code."""
    return run_command(BenchOptions, argv, bench, prog="lrc bench", description=__doc__)


def main(argv: list[str] | None = None) -> None:
    """``lrc bench`` as a script (exits with its code)."""
    import sys

    sys.exit(cli(argv))


def bench(args: BenchOptions) -> None:
    """Run the benchmark ``args`` describes; print (and with ``--json``, write) the results."""
    if args.dtype not in (None, "fp32", "bf16"):
        raise OptionError(f"--dtype must be fp32 or bf16, got {args.dtype!r}")
    if args.nproc > 1:
        return data_parallel_main(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.backends.cuda.matmul.allow_tf32 = True
    teacher, lrc, student, variants = build(args, device, dtype)
    V = teacher.config.vocab_size
    ids = torch.randint(0, V, (args.batch, args.seq), device=device)
    tokens = args.batch * args.seq
    opt_s = torch.optim.AdamW(student.parameters(), lr=1e-5, foreach=True)
    opt_l = torch.optim.AdamW(lrc.trainable_parameters(), lr=1e-5, foreach=True)
    opt_v = {k: torch.optim.AdamW(m.trainable_parameters(), lr=1e-5, foreach=True) for k, m in variants.items()}

    K = args.gas
    tokens *= K  # per optimizer step

    def teacher_fwd():
        with torch.no_grad():
            for _ in range(K):
                teacher(input_ids=ids, use_cache=False)

    def student_step():
        for _ in range(K):
            loss = student(input_ids=ids, labels=ids, use_cache=False).loss
            (loss / K).backward()
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)

    shifted = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1).reshape(-1)

    def student_step_fused_ce():  # (b) with LRC's chunked CE instead of HF's full-logit CE (a tighter bound)
        h = student.model(input_ids=ids, use_cache=False).last_hidden_state
        loss, _, _ = fused_logit_losses(h.reshape(tokens, -1), student.lm_head.weight, shifted,
                                        w_ce=1.0 / (tokens - args.batch), chunk_tokens=args.chunk_tokens)
        loss.backward()
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)

    def lrc_step(model=lrc, opt=opt_l, once_per_step=True):
        for i in range(K):  # weights generated once per optimizer step (lrc.generation_window), or per micro-batch
            (model(ids, window_end=(i == K - 1) if once_per_step else None).loss / K).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    gen_grads = {}

    def gen_only():  # forward + backward of the weight generation alone (fixed upstream gradients)
        w = {k: v for k, v in lrc.student_weights().items() if v.requires_grad}
        if not gen_grads:
            gen_grads.update({k: torch.randn_like(v) * 1e-3 for k, v in w.items()})
        torch.autograd.backward(list(w.values()), [gen_grads[k] for k in w])
        opt_l.zero_grad(set_to_none=True)

    phases = {"a_teacher_forward": teacher_fwd, "b_student_train_step": student_step, "c_lrc_step": lrc_step}
    if K > 1:
        phases["c_lrc_step_per_micro_batch"] = lambda: lrc_step(once_per_step=False)
    for k, m in variants.items():
        phases[f"c_lrc_step_{k}"] = (lambda m=m, o=opt_v[k]: lrc_step(m, o))
    if args.ablations:
        phases["weight_generation_fwd_bwd"] = gen_only
        phases["b_student_train_step_fused_ce"] = student_step_fused_ce

    times = {k: [] for k in phases}
    cpu_times = {k: [] for k in phases}  # process CPU seconds: less sensitive than wall time to other load
    peaks = {}
    for r in range(args.warmup + args.iters):
        for name, fn in phases.items():
            with PeakMemory(device) as pm:
                dt, dc = _timed(fn, device)
            if r >= args.warmup:
                times[name].append(dt)
                cpu_times[name].append(dc)
                peaks[name] = max(peaks.get(name, 0), pm.peak)
        print(_round_line(r, args.warmup + args.iters, times), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
    res = {
        "date": date.today().isoformat(), "device": torch.cuda.get_device_name() if device.type == "cuda" else
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "teacher": args.teacher, "target_hidden_size": args.target_hidden_size, "batch": args.batch, "seq": args.seq,
        "dtype": str(dtype).replace("torch.", ""), "attn": args.attn, "chunk_tokens": args.chunk_tokens,
        "gradient_checkpointing": args.gradient_checkpointing, "gas": K,
        "tokens_per_optimizer_step": tokens,
        "generation_gflop_per_step": sum(generation_flops(
            {n: tuple(w.shape) for n, w in lrc.student.named_parameters() if w.dim() == 2},
            teacher.config.hidden_size).values()) / 1e9,
        "threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg(),
        "seconds": med, "seconds_min": best, "cpu_seconds": cpu_med, "seconds_all": times,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "peak_memory_GiB": {k: v / 2**30 for k, v in peaks.items()},
        "ratio_c_over_a_plus_b": med["c_lrc_step"] / (med["a_teacher_forward"] + med["b_student_train_step"]),
        "ratio_c_over_a_plus_b_min": best["c_lrc_step"] / (best["a_teacher_forward"] + best["b_student_train_step"]),
        "ratio_c_over_a_plus_b_cpu": cpu_med["c_lrc_step"] / (cpu_med["a_teacher_forward"]
                                                              + cpu_med["b_student_train_step"]),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "trainable_params": sum(p.numel() for p in lrc.trainable_parameters()),
    }
    if K > 1:
        per_mb = med["c_lrc_step_per_micro_batch"]
        res["ratio_c_per_micro_batch_over_a_plus_b"] = per_mb / (med["a_teacher_forward"] + med["b_student_train_step"])
        res["ratio_c_per_micro_batch_over_a_plus_b_cpu"] = cpu_med["c_lrc_step_per_micro_batch"] / (
            cpu_med["a_teacher_forward"] + cpu_med["b_student_train_step"])
        res["once_per_step_speedup"] = per_mb / med["c_lrc_step"]
    modes = [m for m in args.mlp_train.split(",") if m]
    if modes:
        res["mlp_train"] = {m: {
            "step_time_ratio": med[f"c_lrc_step_{m}"] / med["c_lrc_step"],
            "step_cpu_time_ratio": cpu_med[f"c_lrc_step_{m}"] / cpu_med["c_lrc_step"],
            "peak_memory_ratio": peaks[f"c_lrc_step_{m}"] / peaks["c_lrc_step"] if peaks["c_lrc_step"] else None,
            "trainable_params": sum(p.numel() for p in variants[m].trainable_parameters()),
            "core_bases_bytes": sum(q.numel() * q.element_size() for q in (variants[m].core_bases() or {}).values()),
        } for m in modes}
        res["mlp_train"]["peak_memory_note"] = ("GPU: max_memory_allocated of the phase; CPU: sampled process RSS, "
                                                "which also holds every other phase's tensors")
    if args.phases:
        res["lrc_phases"] = lrc_phases(lrc, opt_l, ids, device, args.iters)
    if args.flops:  # matmul / attention FLOPs of each phase (torch's FLOP counter): a noise-free bound
        from torch.utils.flop_counter import FlopCounterMode

        def flops(fn):
            with FlopCounterMode(display=False) as fc:
                fn()
            return fc.get_total_flops() / 1e9

        gf = {k: flops(fn) for k, fn in phases.items()}
        gf["c_ratio_c_over_a_plus_b"] = gf["c_lrc_step"] / (gf["a_teacher_forward"] + gf["b_student_train_step"])
        res["gflop"] = gf
        print("GFLOP: " + ", ".join(f"{k}={v:.3f}" if k.startswith("c_ratio") else f"{k}={v:.1f}"
                                    for k, v in gf.items()), flush=True)
    del student, opt_s
    if args.loss_memory:
        res["loss_memory"] = loss_memory(args, device, dtype)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


def _dp_worker(rank: int, args, port: int, results) -> None:
    """One of ``--nproc`` processes (gloo on CPU; NCCL, one GPU each, bf16 by default, when there are enough GPUs):
    DDP over the LRC model, the step timed unsharded and sharded in turn."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.flop_counter import FlopCounterMode

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and torch.cuda.device_count() >= args.nproc
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if gpu else "fp32")]
    dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=args.nproc)
    try:
        teacher, lrc, student, _ = build(args, device, dtype)
        del student
        lrc.projections.float()  # fp32 master projections, as in training
        ddp = DDP(lrc, device_ids=[rank] if gpu else None)
        opt = torch.optim.AdamW(lrc.trainable_parameters(), lr=1e-5, foreach=True)
        group = dist.new_group(list(range(args.nproc)))
        plan = lrc.plan_sharded_generation(group, rank, args.nproc)
        ids = torch.randint(0, teacher.config.vocab_size, (args.batch, args.seq),
                            generator=torch.Generator().manual_seed(rank)).to(device)
        K = args.gas

        def step(sharded: bool):
            lrc.shard_plan = plan if sharded else None
            for i in range(K):
                ctx = ddp.no_sync() if i < K - 1 else contextlib.nullcontext()
                with ctx:
                    (ddp(ids, window_end=(i == K - 1)).loss / K).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        phases = {"c_lrc_step_unsharded": lambda: step(False), "c_lrc_step_sharded": lambda: step(True)}
        times = {k: [] for k in phases}
        cpu = {k: [] for k in phases}
        for r in range(args.warmup + args.iters):
            for name, fn in phases.items():
                dist.barrier()
                dt, dc = _timed(fn, device)
                if r >= args.warmup:
                    times[name].append(dt)
                    cpu[name].append(dc)
            if rank == 0:
                print(_round_line(r, args.warmup + args.iters, times), flush=True)
        gflop = {}
        for name, fn in phases.items():  # every matmul of the step on this rank (torch's FLOP counter)
            with FlopCounterMode(display=False) as fc:
                fn()
            gflop[name] = fc.get_total_flops() / 1e9
        results[rank] = {"seconds": {k: statistics.median(v) for k, v in times.items()},
                         "cpu_seconds": {k: statistics.median(v) for k, v in cpu.items()},
                         "seconds_all": times, "step_gflop": gflop,
                         "generation_gflop_planned": plan.flops_per_rank()[rank] / 1e9 if plan else None,
                         "generation_gflop_unsharded": sum(plan.flops.values()) / 1e9 if plan else None}
    finally:
        dist.destroy_process_group()


def data_parallel_main(args) -> None:
    """``--nproc N``: the sharded against the unsharded LRC step in N processes (``_dp_worker``)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_dp_worker, args=(args, port, results), nprocs=args.nproc)
        ranks = [results[r] for r in range(args.nproc)]
    r0 = ranks[0]
    res = {
        "date": date.today().isoformat(), "device": (
            f"{args.nproc} x {torch.cuda.get_device_name()}, NCCL, DDP" if torch.cuda.device_count() >= args.nproc
            else f"CPU ({platform.processor() or platform.machine()}), {args.nproc} processes x "
                 f"{args.threads or torch.get_num_threads()} threads, gloo, DDP"),
        "torch": torch.__version__, "teacher": args.teacher, "target_hidden_size": args.target_hidden_size,
        "batch_per_process": args.batch, "seq": args.seq, "gas": args.gas, "nproc": args.nproc,
        "load_average_at_end": os.getloadavg(), "ranks": ranks,
        "step_time_ratio_sharded_over_unsharded": r0["seconds"]["c_lrc_step_sharded"]
        / r0["seconds"]["c_lrc_step_unsharded"],
        "step_cpu_time_ratio_sharded_over_unsharded": r0["cpu_seconds"]["c_lrc_step_sharded"]
        / r0["cpu_seconds"]["c_lrc_step_unsharded"],
        "generation_gflop_per_rank": [r["generation_gflop_planned"] for r in ranks],
        "generation_gflop_unsharded": r0["generation_gflop_unsharded"],
        "step_gflop_saved_per_rank": [r["step_gflop"]["c_lrc_step_unsharded"] - r["step_gflop"]["c_lrc_step_sharded"]
                                      for r in ranks],
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


def lrc_phases(lrc, opt, ids, device, iters: int) -> dict:
    """Where one LRC step's time goes: wall and CPU seconds per phase (median over ``iters`` steps).

    Run after the interleaved rounds, with timers wrapped around the pieces of ``LRCModel.forward``:
    teacher forward (with capture hooks), weight generation (forward), student forward (including
    the clone terms' forward, also given alone), fused KL/CE (forward, which also computes its
    gradients), then backward (all of it: student, clone terms, weight generation) and AdamW.
    """
    import lrc.clone_terms as clone_terms
    import lrc.model as lrc_model

    acc: dict[str, list[float]] = {}
    restore = []

    def timed(key, fn):
        def wrapper(*a, **kw):
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                _sync(device)
                w, c = acc.setdefault(key, [0.0, 0.0])
                acc[key] = [w + time.perf_counter() - t0, c + time.process_time() - c0]
        return wrapper

    def patch(obj, name, key):  # instance (or module) attribute shadowing the method / function
        own = name in vars(obj)
        restore.append((obj, name, own, vars(obj).get(name)))
        setattr(obj, name, timed(key, getattr(obj, name)))

    tm = lrc.teacher.model
    patch(tm, "forward", "teacher_forward")
    patch(lrc, "student_weights", "weight_generation_forward")
    patch(lrc_model, "functional_call", "student_forward_with_clone_terms")
    patch(clone_terms, "clone_distance", "clone_terms_forward")
    patch(clone_terms, "student_term", "clone_terms_forward")
    patch(lrc_model, "fused_logit_losses", "kl_ce_fused")
    rows = []
    try:
        for _ in range(max(iters, 1)):
            acc.clear()
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = lrc(ids)
            _sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            out.loss.backward()
            _sync(device)
            t2, c2 = time.perf_counter(), time.process_time()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            t3, c3 = time.perf_counter(), time.process_time()
            row = {k: list(v) for k, v in acc.items()}
            row["forward_total"] = [t1 - t0, c1 - c0]
            row["backward"] = [t2 - t1, c2 - c1]
            row["adamw"] = [t3 - t2, c3 - c2]
            row["step_total"] = [t3 - t0, c3 - c0]
            rows.append(row)
    finally:
        for obj, name, own, orig in reversed(restore):
            if own:
                setattr(obj, name, orig)
            else:
                delattr(obj, name)
    out = {k: {"wall": statistics.median(r[k][0] for r in rows), "cpu": statistics.median(r[k][1] for r in rows)}
           for k in rows[0]}
    print("LRC step phases (median s, wall / cpu): " +
          ", ".join(f"{k}={v['wall']:.3f}/{v['cpu']:.3f}" for k, v in out.items()), flush=True)
    return out


def loss_memory(args, device, dtype) -> dict:
    """Peak memory (forward + backward) of head + KL + CE: fused chunked vs plain full-logit autograd."""
    N, V, ds, d = args.loss_tokens, args.loss_vocab, args.target_hidden_size, 2 * args.target_hidden_size
    g = torch.Generator(device=device).manual_seed(0)
    h_s = torch.randn(N, ds, device=device, dtype=dtype, generator=g).requires_grad_()
    u_s = (torch.randn(V, ds, device=device, dtype=dtype, generator=g) * 0.02).requires_grad_()
    h_t = torch.randn(N, d, device=device, dtype=dtype, generator=g)
    u_t = torch.randn(V, d, device=device, dtype=dtype, generator=g) * 0.02
    tgt = torch.randint(0, V, (N,), device=device, generator=g)
    out = {}

    cap = args.loss_softcap

    def chunked():
        loss, _, _ = fused_logit_losses(h_s, u_s, tgt, h_t=h_t, u_t=u_t, tau=40.0, chunk_tokens=args.chunk_tokens,
                                        softcap=cap)
        loss.backward()

    def capped(z):
        return z if not cap else cap * torch.tanh(z / cap)

    def plain():
        zs = capped((h_s @ u_s.t()).float())
        with torch.no_grad():
            lt = torch.log_softmax(capped((h_t @ u_t.t()).float()) / 40.0, -1)
        ls = torch.log_softmax(zs / 40.0, -1)
        kl = torch.nn.functional.kl_div(ls, lt, log_target=True, reduction="sum")
        ce = torch.nn.functional.cross_entropy(zs, tgt)
        (kl + ce).backward()

    for name, fn in (("chunked", chunked), ("unchunked", plain)):
        h_s.grad = u_s.grad = None
        _sync(device)
        base = torch.cuda.memory_allocated() if device.type == "cuda" else _rss()
        with PeakMemory(device) as pm:
            fn()
        out[f"{name}_peak_extra_GiB"] = (pm.peak - base) / 2**30
    out["ratio"] = out["chunked_peak_extra_GiB"] / out["unchunked_peak_extra_GiB"]
    out.update(tokens=N, vocab=V, d_s=ds, d=d, chunk_tokens=args.chunk_tokens, softcap=cap)
    return out


if __name__ == "__main__":
    main()
