"""Turn the library's input errors into a one-line message and a non-zero exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .checkpoint import CheckpointError
from .config import LRCConfigError
from .families import UnsupportedTeacherError
from .generate import GenerationError

# Errors that describe bad input (files, flags, configs): reported without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    LRCConfigError, UnsupportedTeacherError, CheckpointError, GenerationError, FileNotFoundError,
)


def user_error_types() -> tuple[type[BaseException], ...]:
    from .convert import ConversionError  # local import: convert imports the model stack

    extra: list[type[BaseException]] = [ConversionError]
    try:
        from .data import DataError

        extra.append(DataError)
    except ImportError:
        pass
    return USER_ERRORS + tuple(extra)


def run_cli(fn: Callable[[], object]) -> int:
    """Run ``fn``; print ``error: <message>`` and return 2 for user errors, else 0."""
    try:
        fn()
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
