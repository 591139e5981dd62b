"""Where start-up time goes, from the command to the first result (issue 20): the driver's own start, reading
the datasets, planning each stage, then for its replicas (the one ready last: the critical path) process start,
imports, CUDA initialisation, tokenizer or processor, weights, fused kernels, graph capture; and when the first
result came. Phases are seconds; the worker measures its own (`engine/worker.py`), the driver the rest."""

from __future__ import annotations

import os

WORKER_PHASES = ("process start", "attach", "imports", "CUDA init", "tokenizer", "weights", "kernels", "graphs")
"""A replica's phases in order (a backend without a breakdown reports its whole `load` as weights; a replica
kept loaded by `evalfleet serve` reports only `attach`)."""
RUN_PHASES = ("driver start", "datasets")
STAGE_PHASES = ("plan", *WORKER_PHASES, "first result")
"""A stage's columns: `first result` counts from the workers' start to the first result stored."""


def process_age() -> float:
    """Seconds since this process started (interpreter start and imports included); 0 where /proc is missing."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def critical_replica(workers: dict[str, dict[str, float]]) -> dict[str, float]:
    """The phases of the replica whose start-up took longest (the others loaded meanwhile)."""
    return max(workers.values(), key=lambda p: sum(p.values()), default={})


def startup_line(phases: dict[str, float]) -> str:
    """`start-up of the last replica: process start 1.2 s, imports 3.0 s, ...` for the console."""
    return "start-up of the last replica ready: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
