"""The run's log file (run.log): the full story, with tracebacks, while the console shows one line each."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from evalfleet.errors import UserError

log = logging.getLogger("evalfleet")


class RunLog(logging.FileHandler):
    """run.log. When it can no longer be written (a full disk, a failing filesystem) it says so once on stderr and
    stops, instead of printing a traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush failed too
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"[evalfleet] cannot write the log {self.baseFilename} ({sys.exc_info()[1]}); "
                             "logging stops\n")


def log_to(path: Path) -> logging.Handler:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RunLog(path)
    except OSError as err:
        raise UserError(f"cannot write the run's log {path}: {err.strerror or err}; check that its folder is "
                        "writable, or point output_dir (--out) elsewhere") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler
