#!/usr/bin/env python
"""Build ``sample_cloze.jsonl``: a small offline multiple-choice task from the shipped held-out Austen text.

Each item: 24 words of a passage as context; the true next 6 words and 3 distractors (the 6 words that
follow other passages). Deterministic (seed 0). A smoke benchmark for the demo student that needs no
download: ``scripts/eval.sh runs/demo/student lrc_sample_cloze --include_path configs/lm_eval``.

    python configs/lm_eval/make_sample_cloze.py   # rewrites configs/lm_eval/sample_cloze.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "data" / "sample" / "heldout.txt"
N_ITEMS, CONTEXT, ANSWER = 100, 24, 6


def main() -> None:
    words = SOURCE.read_text().split()
    rng = random.Random(0)
    span = CONTEXT + ANSWER
    starts = list(range(0, len(words) - span, span))
    rng.shuffle(starts)
    starts = starts[:N_ITEMS]
    answers = [" ".join(words[s + CONTEXT:s + span]) for s in starts]
    with open(HERE / "sample_cloze.jsonl", "w") as f:
        for i, s in enumerate(starts):
            others = rng.sample([a for j, a in enumerate(answers) if j != i], 3)
            label = rng.randrange(4)
            choices = others[:label] + [answers[i]] + others[label:]
            f.write(json.dumps({"context": " ".join(words[s:s + CONTEXT]), "choices": choices, "label": label}) + "\n")


if __name__ == "__main__":
    main()
