#!/usr/bin/env python
"""Peak memory of converting an LRC checkpoint (``convert_ckpt.py``), against the teacher's size.

    python scripts/bench_convert_memory.py --shape smollm2-360m --target-hidden-size 480 [--tree OTHER_CHECKOUT]

A random teacher of the named shape (``lrc.training.bench.SHAPES``) is saved in bf16 safetensors (as released
teachers are), random projections as an LRC checkpoint against it; ``convert_ckpt.py`` of this checkout (and of
``--tree``, e.g. a worktree of an earlier commit, to compare) converts it in a child process whose peak RSS
(``getrusage``) is reported beside the teacher's bf16 and fp32 sizes and the student's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _child_peak(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd`` in a fresh process through a tiny wrapper; (its peak RSS in GiB, wall seconds)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{(p.stdout + p.stderr)[-3000:]}")
    peak_kb = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("PEAK")))
    return peak_kb / 2**20, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smollm2-360m")
    ap.add_argument("--target-hidden-size", type=int, default=480)
    ap.add_argument("--tree", action="append", default=[], help="another checkout whose convert_ckpt.py to compare")
    ap.add_argument("--out", default="docs/bench/convert_memory.json")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from lrc.checkpoint import TeacherRef, save_lrc_checkpoint
    from lrc.config import LRCConfig
    from lrc.model import LRCModel
    from lrc.teacher import teacher_fingerprint
    from lrc.training.bench import SHAPES

    tmp = Path(tempfile.mkdtemp(prefix="bench_convert_"))
    cfg = SHAPES[a.shape]()
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    teacher.save_pretrained(tmp / "teacher")
    model = LRCModel(teacher, LRCConfig(target_hidden_size=a.target_hidden_size))
    n_student = sum(w.numel() for w in model.meta_generation(model._student_param_names).values())
    ref = TeacherRef(str(tmp / "teacher"), teacher_fingerprint(teacher.config), teacher.config.model_type)
    save_lrc_checkpoint(tmp / "run", model.projections.float(), model.lrc_config, ref)
    del model, teacher
    rows = []
    for tree in [REPO, *map(Path, a.tree)]:
        out = tmp / f"student_{len(rows)}"
        peak, wall = _child_peak([sys.executable, str(tree / "convert_ckpt.py"), "--ckpt-path", str(tmp / "run"),
                                  "--save-path", str(out)], tree)
        rows.append({"tree": str(tree), "peak_rss_gib": peak, "wall_s": wall})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"teacher_params": n_teacher, "teacher_bf16_gib": 2 * n_teacher / 2**30,
               "teacher_fp32_gib": 4 * n_teacher / 2**30, "student_params": n_student,
               "student_bf16_gib": 2 * n_student / 2**30}
    print(json.dumps(summary, indent=1))
    record = {"command": "python " + " ".join(sys.argv), "date": str(date.today()), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "torch": torch.__version__, "runs": rows,
              "summary": summary, "self_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
