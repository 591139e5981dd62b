"""Errors shown to users without a traceback (the full traceback goes to the run's log)."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (config, files, paths); printed as a message, not a traceback. Exit code 2."""

    exit_code = 2


class RunError(Exception):
    """A run that could not go on (its store cannot be written, every worker died); printed as a message, not a
    traceback, after what was done is saved. Exit code 1."""

    exit_code = 1


def not_utf8(path: Path, what: str) -> str:
    """Why `path` is not UTF-8 text: the first bad byte with its line and column, and the fix."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return (f"{what} {path}: not UTF-8 text (byte 0x{line[err.start]:02x} at line {lineno}, column "
                        f"{err.start + 1}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed")
    return f"{what} {path}: not UTF-8 text"
