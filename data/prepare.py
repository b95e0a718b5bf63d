#!/usr/bin/env python
"""``lrc prepare`` under its old path (``lrc.data.prepare.cli``; same flags): raw text / conversations -> shuffled
fixed-length token shards + manifest.json, read by ``lrc train --dataset_name DIR``."""

import sys

from lrc.data.prepare.cli import cli, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(cli())
