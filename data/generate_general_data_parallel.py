#!/usr/bin/env python
"""Alias of ``data/prepare.py`` under the official script's name (same flags as data/prepare.py; the official
``--version`` / ``--tkn-path`` / ``--num-workers`` flags and hard-coded input paths are not supported)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prepare import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
