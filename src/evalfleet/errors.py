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


HINTS = {
    "torchvision": "VLM processors in transformers 5 need torchvision for their video part. evalfleet loads them "
                   "without it where torchvision is not installed; a torchvision built for another torch fails at "
                   "import: install the one matching your torch (same version line and index), or uninstall it",
    "trust_remote_code": "this checkpoint ships its own code: set model.trust_remote_code: true if you trust it",
    "out of memory": "the model does not fit: try placement.mode: model_parallel, more GPUs (--gpus), or a smaller "
                     "dtype",
}


def exception_text(tb: str) -> str:
    """The last exception of a formatted traceback, its whole message (several lines for some libraries' errors,
    whose last line alone says nothing), followed by a hint when it is a known cause."""
    lines = tb.rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    i = frames[-1] + 1 if frames else 0
    while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
        i += 1  # the frame's source line and its ^^^ markers
    text = "\n".join(line for line in lines[i:] if line.strip()) or tb.strip()
    hints = [hint for key, hint in HINTS.items() if key in text.lower()]
    return text + "".join(f"\nhint: {h}" for h in hints)
