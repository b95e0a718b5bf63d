#!/usr/bin/env python
"""Alias of ``lrc prepare`` under the official script's name (same flags as data/prepare.py; the official
``--version`` / ``--tkn-path`` / ``--num-workers`` flags and hard-coded input paths are not supported)."""

import sys

from lrc.data.prepare.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
