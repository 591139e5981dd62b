"""Stop signals for the driver: Ctrl-C (SIGINT), Slurm's SIGTERM (scancel, time limit, preemption) and the early
warning a job can ask for (`#SBATCH --signal=B:USR1@120`).

The handlers are installed explicitly, whatever the driver inherited: a process started with `&` from a
non-interactive shell inherits SIGINT ignored and would otherwise never stop on Ctrl-C or `kill -INT`.
The first signal raises `Stopped` in the main thread; the driver then stops taking work, commits what has
arrived, releases its leases, stops its workers and exits with `Stopped.exit_code`. Later signals while it does
so are noted and ignored (Slurm may deliver SIGTERM twice: to the batch shell's step and to the task).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (SIGINT), as shells report it."""
EXIT_PREEMPTED = 75
"""Exit code after SIGTERM or SIGUSR1 (EX_TEMPFAIL, "try again"): the run stopped cleanly and resumes when the
same command runs again; `evalfleet slurm` scripts requeue their task on it."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Stopped(BaseException):
    """The driver was asked to stop by a signal (a BaseException, like KeyboardInterrupt: no `except Exception`
    swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__("interrupted" if signum == signal.SIGINT else f"stopped by {self.name} (preempted)")

    @property
    def state(self) -> str:
        """The state recorded for the driver: `interrupted` (Ctrl-C) or `preempted` (SIGTERM, SIGUSR1)."""
        return "interrupted" if self.signum == signal.SIGINT else "preempted"

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_PREEMPTED


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Within the block, SIGINT/SIGTERM/SIGUSR1 raise `Stopped` once; yields the list of signals received.

    Outside the main thread (signals cannot be handled there) it installs nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_stop_signals() -> None:
    """Workers leave stopping to their driver: Slurm signals every process of the step, and a worker that died
    on SIGTERM before its driver saw the signal would be replaced instead of stopped."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
