"""The one event loop: serves the workers of every running stage until each stage is done, then stops them."""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from evalfleet.engine.driver import COMMIT_EVERY_S, StageDriver
from evalfleet.engine.handle import WorkerHandle
from evalfleet.stopping import Stopped


def execute(drivers: list[StageDriver], note: Callable[[str], None]) -> None:
    """Start every driver's workers, serve them all in one loop until each stage is done, stop them."""
    try:
        for d in drivers:
            d.launch()
        serve(drivers)
    except (KeyboardInterrupt, Stopped) as err:
        note(f"{err if isinstance(err, Stopped) else 'interrupted'}; saving results and stopping the workers")
        raise
    finally:
        for d in reversed(drivers):  # the first stage's progress owns the live view: it closes last
            d.shutdown()


def serve(drivers: list[StageDriver]) -> None:
    """Wait for any worker's message or death; hand it to its stage's driver; then let every driver commit,
    renew its leases, refill its queue, and finish once its stage is done."""
    while not all(d.stopped for d in drivers):
        handles: dict[Any, tuple[StageDriver, WorkerHandle, bool]] = {}
        for d in drivers:
            for w in d.workers.values() if not d.stopped else ():
                handles[w.conn] = (d, w, False)
                if w.proc.sentinel is not None:  # a Ray actor has none: its connection's end says it is gone
                    handles[w.proc.sentinel] = (d, w, True)
        for ready in wait(list(handles), timeout=COMMIT_EVERY_S):
            d, w, died = handles[ready]
            if died:
                d.reap(w)
                break  # the maps are stale now
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                if w.proc.sentinel is None:
                    d.reap(w)
                    break
                continue  # its sentinel reports the death
            d.handle(w, msg)
        for d in drivers:
            if d.stopped:
                continue
            d.commit()
            d.maintain()
            if d.queue.finished:
                d.finish()
