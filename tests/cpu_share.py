"""A pytest plugin: under pytest-xdist (`-n N`), each test process gets its own share of the machine's CPUs (its
affinity, which every driver, fork server and worker it starts inherits, and which evalfleet's planner reads).

Most of the suite's time is real processes importing torch and transformers, one core each: two such tests run
side by side on two cores. Without the split, each test's torch would use every core, and two tests at once would
oversubscribe them (session 14: 2.6x slower)."""

from __future__ import annotations

import os
import sys


def share_cpus() -> None:
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    mine = cpus[int(worker.removeprefix("gw")) % int(count)::int(count)] or cpus
    os.sched_setaffinity(0, mine)
    if "torch" in sys.modules:  # imported by another plugin already: its thread pool may be sized for every core
        sys.modules["torch"].set_num_threads(len(mine))


share_cpus()  # at import, before the tests import torch
