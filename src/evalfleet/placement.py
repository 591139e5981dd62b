"""Placement: which workers to start, as pure functions over a snapshot of the machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

from evalfleet.errors import UserError
from evalfleet.workers import WorkerSpec


@dataclass(frozen=True)
class Machine:
    """What placement needs to know about the host."""

    gpus: list[str]
    """Physical ids of visible GPUs (what CUDA_VISIBLE_DEVICES takes), in visible order."""
    cpus: int


def probe_machine() -> Machine:
    """Visible GPUs (NVML, honouring CUDA_VISIBLE_DEVICES) and CPU count of this host."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return Machine([g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"], cpus)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML: a CPU machine
        count = 0
    return Machine([str(i) for i in range(count)], cpus)


def plan_workers(machine: Machine, *, gpus: list[int] | None, workers: int | None) -> list[WorkerSpec]:
    """One worker per chosen GPU; without GPUs, `workers` CPU workers sharing the cores.

    `gpus` are indices into the visible GPUs; `workers` alone (no `gpus`) forces CPU workers.
    """
    if gpus is None and (workers is not None or not machine.gpus):
        n = workers or 1
        threads = max(1, machine.cpus // n)
        return [WorkerSpec(f"cpu{i}", None, threads) for i in range(n)]
    chosen = gpus if gpus is not None else list(range(len(machine.gpus)))
    bad = [g for g in chosen if not 0 <= g < len(machine.gpus)]
    if bad:
        raise UserError(f"--gpus {','.join(map(str, bad))}: only {len(machine.gpus)} GPU(s) are visible")
    threads = max(1, machine.cpus // max(1, len(chosen)))
    return [WorkerSpec(f"gpu{g}", machine.gpus[g], threads) for g in chosen]
