#!/usr/bin/env python
"""Step time of one process with the whole teacher against the sharded path at N = 1 (``--shard_teacher``'s
machinery over a one-rank group): the overhead of the units, the hooks and the re-gathers themselves.

    # the GPU target (one GPU, bf16): within 5 % of the whole teacher
    python scripts/bench_sharded_teacher_n1.py --shape llama-3.2-3b --target-hidden-size 1536 --batch 4 --seq 2048
    # a CPU check of the script itself
    python scripts/bench_sharded_teacher_n1.py --shape smollm2-135m --target-hidden-size 288 --batch 1 --seq 64

A random teacher of the named shape (``lrc.training.bench.SHAPES``) is saved as safetensors (bf16 on a GPU, fp32 on
CPU) in a temporary directory. Each timed run is its own process (one model on the device at a time): the LRC
step (forward, backward, AdamW over the projections) after ``--warmup`` steps, median of ``--steps``; the two
modes alternate ``--rounds`` times. Writes ``--out`` (JSON) with the command, the device and every step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def _run(a) -> None:
    """One timed run (``--run whole|sharded``); prints a JSON line."""
    import torch
    import torch.distributed as dist

    from lrc.config import LRCConfig
    from lrc.model import LRCModel
    from lrc.sharded_teacher import load_sharded_teacher, teacher_mesh
    from lrc.teacher import load_teacher, load_teacher_config

    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = LRCConfig(target_hidden_size=a.target_hidden_size)
    units = None
    if a.run == "sharded":
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=0,
                                world_size=1)
        units = load_sharded_teacher(a.teacher, load_teacher_config(a.teacher), teacher_mesh(device), dtype, device,
                                     a.attn, cfg.teacher_space_linears())
        teacher = units.teacher
    else:
        teacher = load_teacher(a.teacher, dtype=dtype, attn_implementation=a.attn, device=device)
    torch.manual_seed(0)
    model = LRCModel(teacher, cfg, units)
    model.projections.float()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
    ids = torch.randint(3, teacher.config.vocab_size, (a.batch, a.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    times = []
    for i in range(a.warmup + a.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    print("RESULT " + json.dumps({"run": a.run, "step_s": times, "peak_gib": peak,
                                  "device": torch.cuda.get_device_name(0) if cuda else platform.processor()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-3b")
    ap.add_argument("--target-hidden-size", type=int, default=1536)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--out", default="docs/bench/sharded_teacher_n1.json")
    ap.add_argument("--run", choices=["whole", "sharded"], help=argparse.SUPPRESS)
    ap.add_argument("--teacher", help=argparse.SUPPRESS)
    ap.add_argument("--port", default="29531", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run:
        return _run(a)

    import torch
    from transformers import AutoModelForCausalLM

    from lrc.training.bench import SHAPES

    tmp = Path(tempfile.mkdtemp(prefix="bench_n1_"))
    cfg = SHAPES[a.shape]()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    AutoModelForCausalLM.from_config(cfg, dtype=dtype).save_pretrained(tmp / "teacher")
    runs = []
    for rnd in range(a.rounds):
        for mode in ("whole", "sharded"):
            cmd = [sys.executable, __file__, "--run", mode, "--teacher", str(tmp / "teacher"), "--shape", a.shape,
                   "--target-hidden-size", str(a.target_hidden_size), "--batch", str(a.batch), "--seq", str(a.seq),
                   "--steps", str(a.steps), "--warmup", str(a.warmup), "--attn", a.attn, "--port", str(29531 + rnd)]
            p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if p.returncode or line is None:
                sys.exit(f"{mode} failed:\n{(p.stdout + p.stderr)[-3000:]}")
            runs.append({**json.loads(line[len("RESULT "):]), "round": rnd})
            print(json.dumps({k: runs[-1][k] for k in ("run", "round", "peak_gib")}
                             | {"median_s": statistics.median(runs[-1]["step_s"])}), flush=True)

    def med(mode: str) -> float:
        return statistics.median(s for r in runs if r["run"] == mode for s in r["step_s"])

    tokens = a.batch * a.seq
    summary = {"whole_s": med("whole"), "sharded_s": med("sharded"), "overhead": med("sharded") / med("whole") - 1,
               "whole_tokens_per_s": tokens / med("whole"), "sharded_tokens_per_s": tokens / med("sharded")}
    print(json.dumps(summary, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "date": str(date.today()),
                                       "args": vars(a), "load_avg": os.getloadavg(), "runs": runs,
                                       "summary": summary}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
