"""Drivers started at the same moment on a new run all open its store (SQLite can refuse the switch to WAL
with "database is locked" at once, without waiting, while another connection makes the same switch)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path


def _open(path: str, start: mp.synchronize.Barrier, out: mp.Queue) -> None:
    from evalfleet.store import Store

    start.wait()
    try:
        Store(Path(path)).close()
        out.put("ok")
    except Exception as err:  # reported to the test
        out.put(f"{type(err).__name__}: {err}")


def test_many_drivers_create_one_store_at_once(tmp_path):
    ctx = mp.get_context("fork")
    n = 8
    outcomes = []
    for attempt in range(6):  # fresh stores: the race is at creation
        start, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(tmp_path / f"s{attempt}" / "store.db"), start, out))
                 for _ in range(n)]
        for p in procs:
            p.start()
        outcomes += [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
    assert outcomes == ["ok"] * len(outcomes), [o for o in outcomes if o != "ok"][:3]
