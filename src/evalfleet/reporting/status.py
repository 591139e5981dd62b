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
from evalfleet.observe.progress import duration
from evalfleet.store import Store, pid_alive

RATE_WINDOW_S = 60.0
"""Recent throughput (for the ETA) counts results stored in this many last seconds."""
MIN_RATE_SPAN_S = 1.0
"""No rate is shown over a shorter span: a few results over a few milliseconds are no throughput."""
STALE_S = 120.0
"""A running worker whose heartbeat is older than this is shown as silent; a driver on another host whose
heartbeat is older than this is taken as gone."""
ACTIVE = ("loading", "running", "idle")
"""Worker states of a live worker."""


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
    drivers: list[dict[str, Any]]
    """The `evalfleet run` processes that worked on this run, each with its own state."""
    rate: float | None
    """Samples per second, all stages together: over the last RATE_WINDOW_S seconds while the run is running,
    else over its last driver's whole span (a finished run's figures do not decay as time passes); None where that
    span is shorter than a second or unknown (a driver killed before its first heartbeat)."""
    ended: float | None = None
    """When the run stopped running (None while it runs)."""
    end_known: bool = True
    """False when the last driver was killed: `ended` is then its last heartbeat, a lower bound."""

    @property
    def elapsed_s(self) -> float | None:
        return None if self.started is None else (self.ended or time.time()) - self.started

    @property
    def eta_s(self) -> float | None:
        remaining = sum(r.remaining for r in self.rows if r.state != "failed")
        if not remaining:
            return 0.0
        return remaining / self.rate if self.rate and self.state == "running" else None


def _driver_alive(state: dict[str, Any]) -> bool | None:
    """Whether the run's driver process still exists; None when it runs on another host."""
    return pid_alive(int(state["pid"])) if state.get("host") == socket.gethostname() else None


def _run_state(meta: dict[str, Any], drivers: list[dict[str, Any]], live: list[dict[str, Any]],
               workers: list[dict[str, Any]], now: float) -> str:
    """Running while any driver lives; else the state the last driver to act left (`stopped` when it was killed)."""
    state = meta.get("state", "not started")
    if live:
        return "running"
    if drivers:  # the last driver to act decides: one killed after the others ended leaves the run stopped
        last = max(drivers, key=lambda d: d["ended"] or d["heartbeat"])
        return "stopped" if last["state"] == "running" else state
    if state == "running" and not drivers:  # a store from before the drivers table
        alive = _driver_alive(meta)
        recent = any(now - (w["heartbeat"] or 0) < STALE_S for w in workers if w["state"] in ACTIVE)
        if alive is False or (alive is None and not recent):
            return "stopped"
    return state


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
        workers, drivers = store.workers(), store.drivers()
        live = store.live_drivers(stale_s=STALE_S, now=now)
        state = _run_state(meta, drivers, live, workers, now)
        live_ids = {f"{d['host']}:{d['pid']}" for d in live}
        for d in drivers:
            if d["state"] == "running" and d not in live:
                d["state"] = "stopped (process gone)"
        started = meta.get("started")
        ended = None if state == "running" or started is None else (
            meta.get("ended") or max((d["ended"] or d["heartbeat"] or started for d in drivers), default=started))
        since = now - RATE_WINDOW_S if ended is None else started
        rows, recent_results = [], 0
        for stage in cfg.pipeline():
            recent_results += store.made_since(stage.name, since=since)
            busy = any(w["id"].startswith(f"{stage.name}/") and w["state"] in ACTIVE for w in workers)
            for ds in store.datasets():
                if ds["status"] == "failed":
                    rows.append(StageRow(stage.name, ds["name"], 0, 0, 0, "failed"))
                    continue
                expected, done, errors = store.counts(stage.name, ds["name"])
                expected = max(expected, ds["n_samples"] or 0)  # its samples may still be being stored
                row_state = ("done" if done >= expected else
                             "running" if state == "running" and (busy or done) else "pending")
                rows.append(StageRow(stage.name, ds["name"], expected, done, errors, row_state))
        for w in workers:
            span = (w["heartbeat"] or 0) - (w["started"] or 0)
            w["rate"] = w["done"] / span if span > 0 and w["done"] else None
            w["age_s"] = now - w["heartbeat"] if w["heartbeat"] else None
            driver = w["id"].rsplit("@", 1)[-1]
            if w["state"] in ACTIVE and state != "running":
                w["state"] = f"{w['state']} (run {state})"
            elif w["state"] in ACTIVE and drivers and driver not in live_ids:
                w["state"] = f"{w['state']} (its driver is gone)"
            elif w["state"] in ACTIVE and w["age_s"] is not None and w["age_s"] > STALE_S:
                w["state"] = f"{w['state']} (silent)"
        span = (ended - started if ended is not None else min(RATE_WINDOW_S, now - started)) if started \
            else RATE_WINDOW_S
        return RunStatus(cfg.name, state, started, rows, workers, drivers,
                         recent_results / span if span >= MIN_RATE_SPAN_S else None, ended,
                         end_known=ended is None or meta.get("ended") is not None)
    finally:
        store.close()


def _timing(st: RunStatus) -> str:
    """`elapsed 1m02s; 3.10 samples/s over the last 60 s`, `took 5m; ... over the run`, or for a run whose last driver
    was killed `took at least ...; at most ...` (its end is known only from its last heartbeat), and no figure where
    the span is unknown (killed before its first heartbeat)."""
    elapsed = duration(st.elapsed_s) if st.elapsed_s is not None else "-"
    window = f"the last {RATE_WINDOW_S:.0f} s" if st.ended is None else "the run"
    if st.ended is None:
        took = f"elapsed {elapsed}"
    elif st.end_known:
        took = f"took {elapsed}"
    elif st.rate is None:
        return "its last driver was killed before its first heartbeat: how long it ran and its rate are unknown"
    else:
        took = f"took at least {elapsed}"
    if st.rate is None:
        return f"{took}; samples/s not known yet"
    return f"{took}; {'' if st.end_known else 'at most '}{st.rate:.2f} samples/s over {window}"


def status_view(st: RunStatus) -> Group:
    """Tables of a run's status: stages x datasets, then workers."""
    eta = st.eta_s
    head = f"run {st.name}: {st.state}; {_timing(st)}; ETA {duration(eta) if eta is not None else '?'}"
    stages = Table(title=head, title_justify="left")
    for col in ("stage", "dataset", "current", "expected", "remaining", "completion %", "errors", "state"):
        stages.add_column(col, justify="left" if col in ("stage", "dataset", "state") else "right")
    for stage in dict.fromkeys(r.stage for r in st.rows):  # each stage's datasets, then their total
        rows = [r for r in st.rows if r.stage == stage]
        for r in rows:
            stages.add_row(r.stage, r.dataset, str(r.done), str(r.expected), str(r.remaining), f"{r.percent:.1f}",
                           str(r.errors), r.state)
        if len(rows) > 1:
            done, expected = sum(r.done for r in rows), sum(r.expected for r in rows)
            states = {r.state for r in rows}
            stages.add_row(stage, "total", str(done), str(expected), str(sum(r.remaining for r in rows)),
                           f"{100 * done / expected if expected else 100:.1f}", str(sum(r.errors for r in rows)),
                           states.pop() if len(states) == 1 else "running" if "running" in states else "mixed",
                           end_section=True)
    workers = Table(title="workers", title_justify="left")
    for col in ("worker", "device", "state", "done", "samples/s", "last heartbeat"):
        workers.add_column(col, justify="right" if col in ("done", "samples/s") else "left")
    for w in st.workers:
        workers.add_row(w["id"], w["device"] or "-", w["state"] or "-", str(w["done"]),
                        f"{w['rate']:.2f}" if w["rate"] else "-",
                        f"{duration(w['age_s'])} ago" if w["age_s"] is not None else "-")
    drivers = Table(title="drivers", title_justify="left")
    for col in ("driver", "state", "started", "last heartbeat"):
        drivers.add_column(col)
    for d in st.drivers:
        drivers.add_row(f"pid {d['pid']} on {d['host']}", d["state"],
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["started"])),
                        f"{duration(time.time() - d['heartbeat'])} ago" if d["state"] == "running" else "-")
    return Group(stages, workers, drivers) if st.drivers else Group(stages, workers)
