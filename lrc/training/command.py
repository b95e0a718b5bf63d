"""``lrc train`` / ``hf_trainer.py``: parse the command line (``lrc.training.parse``), then train
(``lrc.training.run.train``) or run the demo (``lrc.training.demo.run_demo``); the exit code of ``lrc.errors``."""

from __future__ import annotations

import os
import sys
from typing import Any

from lrc.training.parse import help_text, parse_argv, parse_flags


def _run_parsed(parse, trainer_cls=None) -> int:
    """Parse (``parse()`` -> ``TrainConfig``), then train or run the demo; the exit code of ``lrc.errors`` (0 done, 2
    bad input, 3 non-finite loss, 75 stopped by a signal after saving, 130 interrupted)."""
    from lrc.errors import run_cli

    def go() -> None:
        from lrc.training.demo import run_demo
        from lrc.training.run import train

        cfg = parse()
        (run_demo if cfg.command.demo else train)(cfg, trainer_cls)

    return run_cli(go)


def run(raw_flags: dict[str, Any], trainer_cls=None) -> int:
    """``lrc train`` for flags held in a dict ({name: value}); the exit code (see ``_run_parsed``)."""
    return _run_parsed(lambda: parse_flags(raw_flags), trainer_cls)


def main(**flags: Any) -> None:
    """``run(flags)``, then exit with its code (the official script's ``main``)."""
    sys.exit(run(flags))


def cli(argv: list[str] | None = None, trainer_cls=None) -> int:
    """``lrc train`` (flags as ``--help`` lists them; ``argv`` default: sys.argv[1:]); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        from lrc.training import run

        print(help_text(run.__doc__))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return _run_parsed(lambda: parse_argv(argv), trainer_cls)
