"""The work directory of a run (``<output>.tmp-<pid>``, on Slurm ``<output>.tmp-slurm``): the file names the
tokenize tasks write and the merge reads.

    plan.json                          the run's Plan (lrc.data.prepare.plan)
    tasks/task{r:05d}.src{j:03d}.bin   task r's token ids of source j (the plan's dtype), documents framed
    tasks/task{r:05d}.src{j:03d}.len   their document lengths, int64
    tasks/task{r:05d}.read.json        {documents_read, documents_kept, files}: per source counts of the reader
    tasks/task{r:05d}.json             {tokens, documents_tokenized}: per source counts of the writer (task done)
    tasks/task{r:05d}.error.json       {error}: the one-line message of the task's bad input
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

PLAN = "plan.json"
TASKS = "tasks"
READ_SUFFIX = ".read.json"
DONE_SUFFIX = ".json"
TASK_ERROR_SUFFIX = ".error.json"


def task_files(files: list, rank: int, world_size: int) -> list:
    """The contiguous slice of ``files`` for task ``rank`` (concatenating the slices in rank order = ``files``)."""
    n = len(files)
    return files[rank * n // world_size:(rank + 1) * n // world_size]


def task_path(work: str, rank: int, suffix: str) -> str:
    """``work/tasks/task{rank:05d}{suffix}``."""
    return os.path.join(work, TASKS, f"task{rank:05d}{suffix}")


def source_base(work: str, rank: int, src: int) -> str:
    """Task ``rank``'s files of source ``src`` without the suffix (``.bin`` ids, ``.len`` document lengths)."""
    return task_path(work, rank, f".src{src:03d}")


def task_errors(work: str) -> list[str]:
    """The messages of the tasks that stopped on bad input (``DataError``), in task order."""
    files = sorted(glob.glob(os.path.join(work, TASKS, f"task*{TASK_ERROR_SUFFIX}")))
    return [json.loads(Path(f).read_text())["error"] for f in files]
