"""Cut the demo text sample (data/sample/train.txt, heldout.txt, ood_heldout.txt) from the benchmark prose corpus.

Run from the repository root:  python data/sample/make_sample.py [/work/shared/corpus]

Each slice is contiguous, starts at a given line of the decompressed corpus file and ends at the first
paragraph break (blank line) after a byte budget, so it holds whole paragraphs only. The cut is deterministic.
"""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (output, corpus file, line the slice starts with, byte budget)
SLICES = [
    ("train.txt", "prose.train.txt.xz", "EMMA", 300_000),          # Jane Austen, Emma, from the title page
    ("heldout.txt", "prose.heldout.txt.xz", "CHAPTER 13", 60_000),  # Jane Austen, Northanger Abbey, ch. 13 on
    # another domain: the Python 3.11 documentation (technical prose), from the socket module's sendmsg on
    ("ood_heldout.txt", "prose.heldout.txt.xz", "The following function sends the list of file descriptors fds over an "
     "AF_UNIX socket, on systems which support the SCM_RIGHTS mechanism. See also recvmsg().", 60_000),
]


def cut(raw: bytes, first_line: str, budget: int) -> bytes:
    """Return raw[start:end]: start = first line equal to ``first_line``, end = first blank line after ``budget``."""
    lines = raw.split(b"\n")
    index = [ln.rstrip(b"\r") for ln in lines].index(first_line.encode())
    start = sum(len(ln) + 1 for ln in lines[:index])
    end = raw.index(b"\n\n", start + budget)
    return raw[start:end].rstrip() + b"\n"


def main(corpus_dir: str = "/work/shared/corpus") -> None:
    for out, name, first_line, budget in SLICES:
        with lzma.open(Path(corpus_dir) / name, "rb") as f:
            raw = f.read()
        text = cut(raw, first_line, budget)
        text.decode("utf-8")  # whole paragraphs, so never a split character; fail loudly if not UTF-8
        (HERE / out).write_bytes(text)
        n_lines = text.count(b"\n")
        print(f"{out}: {len(text):,} bytes, {n_lines:,} lines from {name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
