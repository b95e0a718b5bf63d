"""Results computed from a file's content (a sha256, a data check), cached by the file's identity.

A result (a sha256, a data-validation verdict) is stored in ``$LRC_CACHE_DIR`` (default
``${XDG_CACHE_HOME:-~/.cache}/lrc``) under a key made of the file's real path, size, mtime and ctime
(ns) and inode, plus what the caller adds (e.g. the vocabulary size it was checked against). Any change to
the file changes the key, so a stale entry is never used; entries are written atomically, so
concurrent processes at worst compute the same thing twice. Nothing is written next to the file
(model and data directories are often read-only).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    root = os.environ.get("LRC_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lrc"


def file_key(path: str | os.PathLike, *extra: Any) -> str:
    """A key that changes whenever the file (or ``extra``) does."""
    real = os.path.realpath(path)
    st = os.stat(real)
    blob = json.dumps([real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, *extra], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def entry_path(kind: str, key: str, suffix: str = ".json") -> Path:
    return cache_dir() / kind / f"{key}{suffix}"


def cached_json(kind: str, path: str | os.PathLike, compute: Callable[[], Any], *extra: Any) -> Any:
    """``compute()`` for ``path``, or its cached result (JSON-serialisable) while the file is unchanged.

    An unwritable cache directory only costs the recomputation next time.
    """
    from lrc.files import write_json_atomic

    entry = entry_path(kind, file_key(path, *extra))
    try:
        return json.loads(entry.read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    try:
        write_json_atomic(entry, {"path": os.path.realpath(path), "value": value})
    except OSError:
        pass
    return value
