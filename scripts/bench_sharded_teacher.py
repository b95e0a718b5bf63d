#!/usr/bin/env python
"""Per-process peak memory and step time of 2-process training, with and without ``--shard_teacher`` (CPU, gloo).

    python scripts/bench_sharded_teacher.py --shape smollm2-360m --steps 6 --out docs/bench/sharded_teacher_cpu.json

A teacher of the named shape (``lrc.training.bench.SHAPES``; random fp32 weights, saved as safetensors in a temporary
directory) trains a student for ``--steps`` optimizer steps on random tokens, through ``accelerate launch`` with
``configs/accel_cpu_shard_teacher_2proc.yaml`` (2 processes x 1 thread, DDP), once whole on each process and once
sharded, alternately ``--rounds`` times. Each process reports its peak RSS (``getrusage``: the whole run, loading
included) and its step times; the summary gives the peak saved per process as a share of the teacher's size
(N = 2 can save at most 50 %).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _worker(out: str, flags: dict) -> None:
    """One process of a launch: train, then write this rank's peak RSS and step times to ``out``.rankN.json."""
    import threading

    import psutil
    import torch.distributed as dist
    from transformers import TrainerCallback

    from lrc.training.parse import parse_flags
    from lrc.training.run import train
    from lrc.training.trainer import LRCTrainer

    stamps: list[float] = []
    phase = {"now": "load and build"}
    peaks: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:  # RSS every 5 ms, the peak of each phase
        me = psutil.Process()
        while not done.wait(0.005):
            rss = me.memory_info().rss
            peaks[phase["now"]] = max(peaks.get(phase["now"], 0), rss)

    threading.Thread(target=sample, daemon=True).start()

    class Stamp(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            phase["now"] = "before step 1"

        def on_step_begin(self, args, state, control, **kw):
            phase["now"] = f"step {state.global_step + 1}"

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())
            phase["now"] = f"after step {state.global_step}"

    class Timed(LRCTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(Stamp())

    t0 = time.perf_counter()
    train(parse_flags(flags), Timed)
    done.set()
    rank = dist.get_rank() if dist.is_initialized() else 0
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    Path(f"{out}.rank{rank}.json").write_text(json.dumps({
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": steps, "wall_s": time.perf_counter() - t0,
        "phase_peak_rss_gib": {k: v / 2**30 for k, v in peaks.items()}}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="smollm2-360m")
    p.add_argument("--target-hidden-size", type=int, default=480)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--modes", default="whole,sharded", help="which runs, in this order each round")
    p.add_argument("--out", default="docs/bench/sharded_teacher_cpu.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--flags", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return _worker(a.worker, json.loads(a.flags))

    import torch
    from transformers import AutoModelForCausalLM

    from lrc.training.bench import SHAPES

    tmp = Path(tempfile.mkdtemp(prefix="bench_shard_"))
    cfg = SHAPES[a.shape]()
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    teacher_bytes = sum(t.numel() * t.element_size() for t in teacher.parameters())
    teacher.save_pretrained(tmp / "teacher")
    del teacher
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(3, cfg.vocab_size, (a.batch * 2 * (a.steps + 2), a.seq), generator=g).tolist()
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    print(f"teacher {a.shape}: {teacher_bytes / 2**30:.2f} GiB fp32 in {tmp / 'teacher'}", flush=True)

    runs = []
    for rnd in range(a.rounds):
        for shard in [m == "sharded" for m in a.modes.split(",")]:
            name = f"{'sharded' if shard else 'whole'}{rnd}"
            flags = dict(raw_model_name=str(tmp / "teacher"), dataset_name=str(data), output_dir=str(tmp / name),
                         target_hidden_size=a.target_hidden_size, data_max_len=a.seq, batch_size=a.batch,
                         max_steps=a.steps, save_steps=10 ** 6, log_steps=1, report_to="none", warmup_ratio=0.0,
                         shard_teacher=shard, bf16="false")
            cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                   str(REPO / "configs/accel_cpu_shard_teacher_2proc.yaml"), __file__, "--worker", str(tmp / name),
                   "--flags", json.dumps(flags)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
            t0 = time.perf_counter()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{name} failed:\n{(r.stdout + r.stderr)[-3000:]}")
            ranks = [json.loads(Path(f"{tmp / name}.rank{i}.json").read_text()) for i in range(2)]
            run = {"sharded": shard, "round": rnd, "launch_s": time.perf_counter() - t0,
                   "peak_rss_gib": [x["peak_rss_bytes"] / 2**30 for x in ranks],
                   "phase_peak_rss_gib": [x["phase_peak_rss_gib"] for x in ranks],
                   "step_s_median": statistics.median(s for x in ranks for s in x["step_s"][1:] or x["step_s"])}
            print(json.dumps(run), flush=True)
            runs.append(run)

    if len({r["sharded"] for r in runs}) < 2:
        return
    def peak(shard: bool) -> float:
        return max(max(r["peak_rss_gib"]) for r in runs if r["sharded"] == shard)

    def step(shard: bool) -> float:
        return statistics.median(r["step_s_median"] for r in runs if r["sharded"] == shard)

    saved = peak(False) - peak(True)
    summary = {
        "teacher_gib": teacher_bytes / 2**30, "peak_rss_whole_gib": peak(False), "peak_rss_sharded_gib": peak(True),
        "saved_gib": saved, "saved_share_of_teacher": saved / (teacher_bytes / 2**30),
        "step_s_whole": step(False), "step_s_sharded": step(True),
    }
    print(json.dumps(summary, indent=1))
    record = {"command": "python " + " ".join(sys.argv), "date": str(date.today()), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}, "torch": torch.__version__, "args": vars(a),
              "runs": runs, "summary": summary}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
