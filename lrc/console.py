"""Console messages of a (possibly multi-process) run: printed by the main process only."""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    """True on global rank 0 (``RANK`` as set by ``accelerate launch`` / torchrun; a single process is rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(msg: str) -> None:
    """Print on the main process only."""
    if is_main_process():
        print(msg, flush=True)


def warn(msg: str) -> None:
    """``warning: msg`` on stderr, main process only."""
    if is_main_process():
        print(f"warning: {msg}", file=sys.stderr, flush=True)
