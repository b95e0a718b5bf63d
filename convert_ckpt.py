#!/usr/bin/env python
"""``lrc convert`` under the official script's name (``lrc.after.convert_cli``; same flags): fold an LRC checkpoint into
a standard Hugging Face model directory.

    python convert_ckpt.py --ckpt-path runs/demo --save-path runs/demo/student
"""

import sys

from lrc.after.convert_cli import cli, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(cli())
