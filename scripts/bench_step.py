#!/usr/bin/env python
"""``lrc bench``: the step-speed benchmark (``lrc.training.bench``; same flags). Kept so that recorded commands work."""

from lrc.training.bench import main

if __name__ == "__main__":
    main()
