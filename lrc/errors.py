"""One error model for every command: ``LRCError`` and its exit codes, and ``run_cli``.

Every failure a user can cause (a flag, a file, a checkpoint, the disk, a signal) ends a command with
one line, ``error: <what, where, what was expected>``, and an exit code from the table below. The
full traceback is printed only with ``LRC_DEBUG=1``. Anything else is a bug and keeps its traceback
(exit code 1).

| code | meaning |
|---|---|
| 0 | done (also: nothing to do, e.g. a finished run resumed) |
| 2 | bad input or environment: a flag, a file, a checkpoint, a held lock, a full or read-only disk |
| 3 | the loss became NaN/inf (nothing was saved after it), or `lrc eval` scored NaN/inf |
| 75 | stopped by SIGTERM/SIGINT after writing a checkpoint: resume it (EX_TEMPFAIL: "try again") |
| 130 | interrupted before anything could be saved (a second signal, or one before training began) |

Library error types subclass ``LRCError`` (and, for compatibility, the builtin they always were,
e.g. ``DataError`` is a ``ValueError``).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable

EXIT_USER = 2
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


class LRCError(Exception):
    """A failure the user can act on; ``str(e)`` is the whole one-line message."""

    exit_code: int = EXIT_USER
    quiet: bool = False
    """True on a process that only follows another's decision (a non-main rank): it exits with the same
    code without printing the line a second time."""


class DataError(LRCError, ValueError):
    """Bad training data: the message names the file, the 1-based line where there is one, and what was expected.
    (``lrc.data.datasets``, ``lrc.data.token_shards`` and ``lrc.data.prepare`` raise it; ``lrc.data.datasets.DataError`` is the same class.)"""


class NonFiniteError(LRCError, ArithmeticError):
    """A loss or a score came out NaN or infinite (exit code 3)."""

    exit_code = EXIT_NONFINITE


class RunDirError(LRCError):
    """A directory cannot be used (not writable, held by another run, holds another run, incomplete)."""


class InterruptedRun(LRCError):
    """A signal stopped the run before there was anything to save."""

    exit_code = EXIT_INTERRUPTED


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the file, the system's reason and, for the common cases, what to do."""
    where = e.filename if e.filename is not None else ""
    reason = e.strerror or str(e)
    hint = {
        errno.ENOSPC: "free space on that filesystem (or point --output_dir elsewhere) and resume",
        errno.EDQUOT: "the disk quota is exhausted: free space and resume",
        errno.EROFS: "the filesystem is read-only: choose a writable --output_dir",
        errno.EACCES: "no permission: choose a path you can write to",
    }.get(e.errno or -1)
    msg = f"{where}: {reason}" if where else reason
    return f"{msg} ({hint})" if hint else msg


def is_debug() -> bool:
    return os.environ.get("LRC_DEBUG", "") not in ("", "0")


def run_cli(fn: Callable[[], object]) -> int:
    """Run ``fn``; return 0, or print ``error: <message>`` for a user-caused failure and return its code.

    ``LRCError`` -> its ``exit_code``; ``OSError`` (missing file, full or read-only disk) -> 2;
    ``KeyboardInterrupt`` -> 130. With ``LRC_DEBUG=1`` the traceback is printed too. Other exceptions
    (bugs) propagate with their traceback.
    """
    try:
        fn()
        return 0
    except LRCError as e:
        return _report(str(e), e.exit_code, e.quiet)
    except OSError as e:
        return _report(describe_os_error(e), EXIT_USER)
    except KeyboardInterrupt:
        return _report("interrupted (nothing was saved after the last complete checkpoint)", EXIT_INTERRUPTED)


def _report(message: str, code: int, quiet: bool = False) -> int:
    """Print the one line (and, with LRC_DEBUG=1, the traceback of the exception being handled)."""
    if is_debug():
        traceback.print_exc()
    if not quiet:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return code
