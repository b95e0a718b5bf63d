#!/usr/bin/env python
"""What the run contract costs: the packed-jsonl check before training, and sha256 (manifests, teacher identity).

    HF_HUB_OFFLINE=1 python scripts/bench_run_contract.py [--gb 1.0] [--path FILE.jsonl] [--keep]

Writes (or reuses, with ``--path``) a packed jsonl of 2048-token lines with ids below 128,256 (a
Llama-3 vocabulary) of about ``--gb`` GB, then times, each in a fresh cache directory:

- ``index_packed_jsonl`` in one process (the check's CPU cost per GB);
- the default path (``cached_index``: byte ranges checked by up to 16 processes, progress bar);
- the same call again (the cached result: what a restart or a resume pays);
- sha256 of the file (what a manifest costs per GB of checkpoint, and the teacher fingerprint per
  GB of weights on first use) and ``weights_fingerprint``-style cached lookups;
- the data's content fingerprint a resume compares (``lrc.training.record.dataset_identity``: sampled blocks);
- the teacher's non-finite check at load (``lrc.teacher.check_finite_weights``) on 1 GB of fp32 weights and
  the same in bf16.

Reports wall and process CPU seconds and the machine load (1-minute load average) before each phase.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from lrc.cli.options import options, run_command

REPO = Path(__file__).resolve().parents[1]

VOCAB = 128_256
SEQ = 2048


def write_packed(path: Path, gb: float) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    target, n = int(gb * 1e9), 0
    with open(path, "w") as f:
        while n < target:
            line = json.dumps({"input_ids": rng.integers(0, VOCAB, SEQ).tolist(), "data_cls": "general"}) + "\n"
            f.write(line)
            n += len(line)


def timed(label: str, fn, results: dict) -> object:
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    results[label] = {"wall_s": round(wall, 3), "main_process_cpu_s": round(cpu, 3), "load_before": round(load, 2)}
    print(f"{label:<58} wall {wall:8.2f} s   main-process cpu {cpu:8.2f} s   (load {load:.2f})", flush=True)
    return out


@options(group="what to time")
class RunContractBench:
    """The benchmark's flags."""

    gb: float = 1.0
    """size of the packed jsonl to write (GB)"""
    path: str | None = None
    """use this packed jsonl instead of writing one (it is written there if missing)"""
    keep: bool = False
    """keep the temporary directory"""
    json_out: str | None = None
    """also write the results to this JSON file"""


def main(gb: float = RunContractBench.gb, path: str | None = None, keep: bool = False,
         json_out: str | None = None) -> None:
    """Time every phase (flags: ``RunContractBench``); print, and with ``json_out`` write, the results."""
    import lrc.data.check as dc
    from lrc.file_cache import cached_json
    from lrc.files import sha256_file

    tmp = Path(tempfile.mkdtemp(prefix="bench-run-contract-"))
    data = Path(path) if path else tmp / "train.jsonl"
    if not data.is_file():
        print(f"writing {data} ({gb} GB of {SEQ}-token lines) ...", flush=True)
        write_packed(data, gb)
    size = data.stat().st_size
    lines = sum(1 for _ in open(data, "rb"))
    print(f"{data}: {size / 1e9:.3f} GB, {lines:,} lines; cpus {os.cpu_count()}", flush=True)
    res: dict = {"file_gb": round(size / 1e9, 3), "lines": lines, "cpus": os.cpu_count(),
                 "date": time.strftime("%Y-%m-%d")}
    os.environ["LRC_CACHE_DIR"] = str(tmp / "cache1")
    saved = dc.PARALLEL_FROM_BYTES
    dc.PARALLEL_FROM_BYTES = 1 << 62
    timed("check, 1 process", lambda: dc.index_packed_jsonl(str(data), VOCAB, progress=False), res)
    dc.PARALLEL_FROM_BYTES = saved
    workers = min(dc._MAX_WORKERS, os.cpu_count() or 1)
    timed(f"check, default ({workers} processes, cached_index)", lambda: dc.cached_index(str(data), VOCAB), res)
    timed("check again: cached (a restart / resume)", lambda: dc.cached_index(str(data), VOCAB), res)
    timed("sha256 of the file", lambda: sha256_file(data), res)
    os.environ["LRC_CACHE_DIR"] = str(tmp / "cache2")
    timed("sha256 through the cache, first use", lambda: cached_json("sha256", data, lambda: sha256_file(data)), res)
    timed("sha256 through the cache, again", lambda: cached_json("sha256", data, lambda: sha256_file(data)), res)
    from lrc.training.record import dataset_identity

    timed("dataset content fingerprint (sampled blocks, every start)", lambda: dataset_identity(str(data)), res)
    import torch

    from lrc.teacher import check_finite_weights

    layer = torch.nn.Linear(16384, 16384, bias=False)  # 268M fp32 values: 1.07 GB
    torch.nn.init.normal_(layer.weight)
    timed("non-finite check of 1.07 GB of fp32 weights (teacher load)", lambda: check_finite_weights(layer, "x"), res)
    layer_bf16 = layer.bfloat16()
    timed("non-finite check of 0.54 GB of bf16 weights (teacher load)", lambda: check_finite_weights(layer_bf16, "x"),
          res)
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {json_out}")
    if not keep and not path:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import sys

    sys.exit(run_command(RunContractBench, None, lambda o: main(**vars(o)), prog="python scripts/bench_run_contract.py",
                         description=__doc__))
