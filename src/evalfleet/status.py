"""`evalfleet status`: where a run stands, read from its store alone (any shell, while the run writes).

`read_status` gathers plain data (testable); `status_view` renders it with rich.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from evalfleet.config import parse_config
from evalfleet.errors import UserError
from evalfleet.progress import duration
from evalfleet.store import Store, pid_alive

RATE_WINDOW_S = 60.0
"""Recent throughput (for the ETA) counts results stored in this many last seconds."""
STALE_S = 120.0
"""A running worker whose heartbeat is older than this is shown as silent."""


@dataclass
class StageRow:
    """One stage x dataset."""

    stage: str
    dataset: str
    expected: int
    done: int
    errors: int
    state: str
    """pending, running, done or failed."""

    @property
    def remaining(self) -> int:
        return self.expected - self.done

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.expected if self.expected else 100.0


@dataclass
class RunStatus:
    name: str
    state: str
    """running, done, interrupted, failed: ..., stopped (the driver is gone), or not started."""
    started: float | None
    rows: list[StageRow]
    workers: list[dict[str, Any]]
    rate: float
    """Samples per second over the last RATE_WINDOW_S seconds, all stages together."""

    @property
    def eta_s(self) -> float | None:
        remaining = sum(r.remaining for r in self.rows if r.state != "failed")
        if not remaining:
            return 0.0
        return remaining / self.rate if self.rate > 0 and self.state == "running" else None


def _driver_alive(state: dict[str, Any]) -> bool | None:
    """Whether the run's driver process still exists; None when it runs on another host."""
    return pid_alive(int(state["pid"])) if state.get("host") == socket.gethostname() else None


def read_status(run_dir: Path, now: float | None = None) -> RunStatus:
    """Read a run's progress from `run_dir/store.db` without writing to it."""
    now = time.time() if now is None else now
    store = Store.open_existing(run_dir)
    try:
        config = store.get_meta("config")
        if config is None:
            raise UserError(f"{run_dir}: the run has not stored its configuration yet")
        cfg = parse_config(config, source=str(run_dir))
        meta = store.get_meta("state") or {}
        state = meta.get("state", "not started")
        workers = store.workers()
        if state == "running":
            alive = _driver_alive(meta)
            recent = any(now - (w["heartbeat"] or 0) < STALE_S for w in workers if w["state"] in ("loading", "running"))
            if alive is False or (alive is None and not recent):
                state = "stopped"
        rows, recent_results = [], 0
        for stage in cfg.pipeline():
            recent_results += len(store.finish_times(stage.name, since=now - RATE_WINDOW_S))
            live = any(w["id"].startswith(f"{stage.name}/") and w["state"] in ("loading", "running") for w in workers)
            for ds in store.datasets():
                if ds["status"] == "failed":
                    rows.append(StageRow(stage.name, ds["name"], 0, 0, 0, "failed"))
                    continue
                expected, done, errors = store.counts(stage.name, ds["name"])
                row_state = ("done" if done >= expected else
                             "running" if state == "running" and (live or done) else "pending")
                rows.append(StageRow(stage.name, ds["name"], expected, done, errors, row_state))
        for w in workers:
            span = (w["heartbeat"] or 0) - (w["started"] or 0)
            w["rate"] = w["done"] / span if span > 0 and w["done"] else None
            w["age_s"] = now - w["heartbeat"] if w["heartbeat"] else None
            if w["state"] in ("loading", "running") and state != "running":
                w["state"] = f"{w['state']} (run {state})"
            elif w["state"] == "running" and w["age_s"] is not None and w["age_s"] > STALE_S:
                w["state"] = "running (silent)"
        elapsed = min(RATE_WINDOW_S, now - meta["started"]) if meta.get("started") else RATE_WINDOW_S
        return RunStatus(cfg.name, state, meta.get("started"), rows, workers,
                         recent_results / elapsed if elapsed > 0 else 0.0)
    finally:
        store.close()


def status_view(st: RunStatus) -> Group:
    """Tables of a run's status: stages x datasets, then workers."""
    eta = st.eta_s
    elapsed = duration(time.time() - st.started) if st.started else "-"
    head = (f"run {st.name}: {st.state}; elapsed {elapsed}; {st.rate:.2f} samples/s over the last "
            f"{RATE_WINDOW_S:.0f} s; ETA {duration(eta) if eta is not None else '?'}")
    stages = Table(title=head, title_justify="left")
    for col in ("stage", "dataset", "done", "expected", "remaining", "%", "errors", "state"):
        stages.add_column(col, justify="left" if col in ("stage", "dataset", "state") else "right")
    for r in st.rows:
        stages.add_row(r.stage, r.dataset, str(r.done), str(r.expected), str(r.remaining), f"{r.percent:.1f}",
                       str(r.errors), r.state)
    workers = Table(title="workers", title_justify="left")
    for col in ("worker", "device", "state", "done", "samples/s", "last heartbeat"):
        workers.add_column(col, justify="right" if col in ("done", "samples/s") else "left")
    for w in st.workers:
        workers.add_row(w["id"], w["device"] or "-", w["state"] or "-", str(w["done"]),
                        f"{w['rate']:.2f}" if w["rate"] else "-",
                        f"{duration(w['age_s'])} ago" if w["age_s"] is not None else "-")
    return Group(stages, workers)
