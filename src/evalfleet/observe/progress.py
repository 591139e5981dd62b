"""Progress: a rich live view on a terminal, plain periodic lines elsewhere (Slurm logs, pipes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment (NVML)."""

    index: int
    util: int
    """Percent of the last sample period in which a kernel ran."""
    used_bytes: int
    total_bytes: int

    def __str__(self) -> str:
        return f"GPU {self.index}: {self.util:3d}% util, {self.used_bytes / 2**30:.1f}/{self.total_bytes / 2**30:.0f} GiB"


class GpuMonitor:
    """Samples every GPU's utilisation and memory through NVML on a thread, every `every` seconds, and
    hands each round to `on_sample`; keeps per-GPU means for the performance summary."""

    def __init__(self, pynvml: object, every: float, on_sample: Callable[[list[GpuSample]], None]) -> None:
        self.nvml, self.every, self.on_sample = pynvml, every, on_sample
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self.util_sum = [0] * len(self.handles)
        self.rounds = 0
        self.latest: list[GpuSample] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="gpu-monitor", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, every: float, on_sample: Callable[[list[GpuSample]], None]) -> GpuMonitor | None:
        """A running monitor, or None when NVML finds no GPU."""
        try:
            import pynvml

            pynvml.nvmlInit()
            if not pynvml.nvmlDeviceGetCount():
                pynvml.nvmlShutdown()
                return None
        except Exception:  # no driver, no NVML library: nothing to show
            return None
        return cls(pynvml, every, on_sample)

    def sample(self) -> list[GpuSample]:
        out = []
        for i, h in enumerate(self.handles):
            mem = self.nvml.nvmlDeviceGetMemoryInfo(h)
            out.append(GpuSample(i, self.nvml.nvmlDeviceGetUtilizationRates(h).gpu, mem.used, mem.total))
        return out

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            samples = self.latest = self.sample()
            self.util_sum = [a + s.util for a, s in zip(self.util_sum, samples)]
            self.rounds += 1
            self.on_sample(samples)

    def mean_util(self) -> dict[int, float]:
        """Mean utilisation per GPU index since the start."""
        return {i: round(u / self.rounds, 1) for i, u in enumerate(self.util_sum)} if self.rounds else {}

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.nvml.nvmlShutdown()


def duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


GPU_EVERY_S = 2.0


class RunProgress:
    """Overall and per-worker progress of one stage.

    Args:
        total: samples of the stage, finished ones included.
        done: samples already finished when the run started (resume).
        console: where to draw; the live view is used only when it is a terminal.
        every, seconds: without a terminal, print a line every `every` samples or `seconds` seconds.
            With GPUs, the live view has a line per GPU (utilisation, memory) refreshed every
            GPU_EVERY_S seconds, and plain lines end with each GPU's utilisation.
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
        self.gpu_tasks: dict[int, TaskID] = {}
        self.monitor = GpuMonitor.start(GPU_EVERY_S, self._on_gpus) if self.owner else shared.monitor

    def _on_gpus(self, samples: list[GpuSample]) -> None:
        if self.bars is None:
            return
        for s in samples:
            if s.index not in self.gpu_tasks:
                self.gpu_tasks[s.index] = self.bars.add_task("", total=None, rate="")
            self.bars.update(self.gpu_tasks[s.index], description=str(s))

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
        eta = duration(per * remaining) if new else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.console.print(
            f"[evalfleet] {self.prefix}{self.done}/{self.total} done ({pct:.0f}%), {remaining} remaining, "
            f"{per:.2f} s/sample, ETA {eta}" + "".join(f"; GPU {g.index} {g.util}%" for g in (self.monitor.latest if self.monitor else [])),
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
        if self.owner and self.monitor is not None:
            self.monitor.stop()
        if self.bars is not None and self.owner:
            self.bars.stop()
