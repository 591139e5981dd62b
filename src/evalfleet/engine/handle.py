"""The driver's view of one worker process: its process and connection, when it started, loaded, was last
heard from and last made progress, and how busy it was."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from evalfleet.engine.launcher import WorkerProcess
from evalfleet.records import WorkerSpec


@dataclass(eq=False)
class WorkerHandle:
    """The driver's view of one worker process."""

    spec: WorkerSpec
    proc: WorkerProcess
    conn: Connection
    generation: int
    ready: bool = False
    t_start: float = field(default_factory=time.monotonic)
    t_spawn_wall: float = field(default_factory=time.time)
    """Wall clock just before its process was spawned (its process start is measured from there)."""
    t_ready: float | None = None
    t_stop: float | None = None
    """When the driver told it to stop: its serving time ends there, before unloading."""
    busy_s: float = 0.0
    """Seconds its batches took on the device (`Backend.generate`; preparation overlaps it), summed."""
    last_seen: float = field(default_factory=time.monotonic)
    """When it last sent anything (a heartbeat at least every HEARTBEAT_S while its process runs)."""
    last_progress: float = field(default_factory=time.monotonic)
    """When it last sent results, or was given work while it held none."""
    last_stored: float = 0.0
    stored_state: str = ""
    """When its heartbeat was last written to the store, and the state written then (running or idle)."""
    hung: str | None = None
    """Why the driver killed it as hung or stalled."""
    python: str | None = None
    """The interpreter it runs under, as it reported when ready."""

    @property
    def id(self) -> str:
        return f"{self.spec.name}.{self.generation}"

    def usage(self) -> dict[str, Any]:
        """Its life so far: held (process start to now), loading, busy seconds and busy fraction once loaded."""
        now = time.monotonic()
        serving = (self.t_stop or now) - self.t_ready if self.t_ready is not None else 0.0
        return {"device": self.spec.name, "gpus": len(self.spec.gpus), "held_s": round(now - self.t_start, 2),
                "load_s": round((self.t_ready or now) - self.t_start, 2), "busy_s": round(self.busy_s, 2),
                "busy_fraction": round(min(1.0, self.busy_s / serving), 3) if serving > 0 else None,  # at most 1:
                "python": self.python}  # its first batch may start before the driver reads its `Ready`
