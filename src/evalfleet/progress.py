"""Progress: a rich live view on a terminal, plain periodic lines elsewhere (Slurm logs, pipes)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class RunProgress:
    """Overall and per-worker progress of one stage.

    Args:
        total: samples of the stage, finished ones included.
        done: samples already finished when the run started (resume).
        console: where to draw; the live view is used only when it is a terminal.
        every, seconds: without a terminal, print a line every `every` samples or `seconds` seconds.
        title: the stage's name in bars and lines ("overall" when the run has one stage).
        shared: another stage's progress whose live view this one joins (stages running at once); the
            first one is closed last.
    """

    def __init__(self, total: int, done: int, *, console: Console, every: int, seconds: float,
                 title: str = "overall", shared: RunProgress | None = None) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.console = console
        self.every, self.seconds = every, seconds
        self.title = title
        self.prefix = "" if title == "overall" else f"{title}: "
        self.t0 = time.monotonic()
        self.last_line_t, self.last_line_done = self.t0, done
        self.worker_done: dict[str, int] = {}
        self.owner = shared is None
        self.bars: Progress | None = shared.bars if shared is not None else None
        self.tasks: dict[str, TaskID] = {}
        if self.owner and console.is_terminal:
            self.bars = Progress(
                TextColumn("{task.description}", style="bold"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                refresh_per_second=4,
            )
            self.bars.start()
        if self.bars is not None:
            self.overall = self.bars.add_task(title, total=total, completed=done, rate="")

    def worker(self, name: str, label: str) -> None:
        """A worker is ready (or was replaced); show a bar for it. Rates count from the first one."""
        if not self.worker_done:
            self.t0 = self.last_line_t = time.monotonic()
        self.worker_done.setdefault(name, 0)
        if self.bars is not None:
            if name in self.tasks:
                self.bars.update(self.tasks[name], description=f"  {self.prefix}{name} {label}")
            else:
                self.tasks[name] = self.bars.add_task(f"  {self.prefix}{name} {label}", total=None, rate="")
        else:
            self.note(f"{self.prefix}worker {name} ready on {label}")

    def step(self, name: str, step: int, steps: int) -> None:
        """A denoising step of the worker's current batch: a bar under the worker's own (terminal only)."""
        if self.bars is None:
            return
        key = f"{name}/steps"
        if key not in self.tasks:
            self.tasks[key] = self.bars.add_task(f"    {self.prefix}{name} denoising", total=steps, rate="")
        self.bars.update(self.tasks[key], completed=step, total=steps)

    def note(self, text: str) -> None:
        """A one-off message (worker died, dataset failed ...), printed above the bars."""
        self.console.print(f"[evalfleet] {text}", markup=False, highlight=False)

    def advance(self, worker: str, n: int) -> None:
        self.done += n
        self.worker_done[worker] = self.worker_done.get(worker, 0) + n
        elapsed = time.monotonic() - self.t0
        if self.bars is not None:
            self.bars.update(self.overall, completed=self.done, rate=self._rate(self.done - self.start_done, elapsed))
            if worker in self.tasks:
                self.bars.update(
                    self.tasks[worker], completed=self.worker_done[worker],
                    rate=self._rate(self.worker_done[worker], elapsed),
                )
            return
        now = time.monotonic()
        if self.done - self.last_line_done >= self.every or now - self.last_line_t >= self.seconds:
            self.print_line()

    def print_line(self) -> None:
        now = time.monotonic()
        new = self.done - self.start_done
        remaining = self.total - self.done
        per = (now - self.t0) / new if new else float("nan")
        eta = _duration(per * remaining) if new else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.console.print(
            f"[evalfleet] {self.prefix}{self.done}/{self.total} done ({pct:.0f}%), {remaining} remaining, "
            f"{per:.2f} s/sample, ETA {eta}",
            markup=False,
            highlight=False,
        )
        self.last_line_t, self.last_line_done = now, self.done

    @staticmethod
    def _rate(n: int, elapsed: float) -> str:
        return f"{n / elapsed:.2f} samples/s" if elapsed > 0 and n else ""

    def flush(self) -> None:
        """Without a terminal: the last count line, if it was not printed yet."""
        if self.bars is None and self.done != self.last_line_done:
            self.print_line()

    def close(self) -> None:
        self.flush()
        if self.bars is not None and self.owner:
            self.bars.stop()
