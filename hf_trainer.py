#!/usr/bin/env python
"""The official training command line, kept verbatim: ``python hf_trainer.py ...`` and
``accelerate launch --config_file configs/... hf_trainer.py ...`` run ``lrc train`` (``lrc.training.run``).

    python hf_trainer.py --demo          # the out-of-the-box run
    python hf_trainer.py --help          # every flag, with its default and the official default

Training is assembled in the library: the flags are ``lrc.training.config.TrainConfig`` (parsed by ``lrc.cli.options``), the
method comes from ``lrc.training.methods``, the run is ``lrc.training.run``.
"""

from __future__ import annotations

import sys

from lrc.training.command import cli, main, run  # noqa: F401
from lrc.training.config import FLAGS  # noqa: F401
from lrc.training.demo import run_demo  # noqa: F401  (the names this script has always offered)
from lrc.training.parse import FlagError, demo_teacher_path, parse_flags  # noqa: F401
from lrc.training.run import train  # noqa: F401

if __name__ == "__main__":
    from lrc.__main__ import main as lrc_main

    sys.exit(lrc_main(["train", *sys.argv[1:]]))
