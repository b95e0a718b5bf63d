#!/usr/bin/env python
"""``lrc bench``: the step-speed benchmark (``lrc.bench_step``; same flags). Kept so that recorded commands work."""

from lrc.bench_step import main

if __name__ == "__main__":
    main()
