"""Worker processes: each loads one model replica (on 0, 1 or k GPUs) once and answers chunks.

It speaks `evalfleet.engine.messages` over a private pipe (one per worker, so a dying worker cannot corrupt a
shared queue): `Work` in, `Ready`, `Results`, `Step`, `Heartbeat`, `Unloaded` or `Fatal` out. Every backend runs
through one loop: its Stream (`backends.stream_of`), fed by the prefetch thread (`worker_loop.py`) in
`streaming.run_stream`.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from multiprocessing.connection import Connection

import evalfleet.bytecode  # noqa: F401  # before torch and transformers, in the fork server and spawned workers
from evalfleet.engine.messages import Fatal, Ready, Step, Unloaded
from evalfleet.engine.replica import limit_address_space, load_replica, setup_process
from evalfleet.engine.sessions import Held, serve_sessions
from evalfleet.engine.streaming import run_stream
from evalfleet.engine.worker_loop import WorkerLoop
from evalfleet.records import WorkerSpec


def worker_main(conn: Connection, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str,
                where: str = "", prewarmed: tuple[float, float] | None = None) -> None:
    """Entry point of a worker: a spawned process of the driver, or a Ray actor (`where`: its node). `prewarmed`:
    (wall clock at its entry, seconds of imports) of a process that imported before its spec came."""
    from evalfleet.backends import free_memory

    started, imported = prewarmed or (time.time(), 0.0)
    setup_process(spec, managed=not where)
    loop = WorkerLoop(conn, batch_size)
    try:
        t0 = time.perf_counter()
        backend, first, stream, phases = load_replica(spec, model_json, batch_size, output_dir, loop)
        phases["imports"] = round(phases["imports"] + imported, 3)
        load_s = time.perf_counter() - t0 + imported
        backend.on_step = lambda step, steps: loop.send(Step(step, steps))  # denoising: the worker's bar
        if spec.cpu_headroom is not None and not spec.gpus:
            limit_address_space(spec.cpu_headroom)
        loop.send(Ready(backend.label + (f" on {where}" if where else ""), load_s, sys.executable, phases=phases,
                        started=started))
    except Exception:
        loop.send(Fatal(traceback.format_exc()))
        loop.close()
        return
    try:
        run_stream(loop, stream, first)
        loop.close()
        if loop.keep:  # a later stage of this run uses the same weights: answer it with this replica
            loop.send(Unloaded(0.0))
            serve_sessions(conn, Held(backend, stream, model_json, batch_size))
    except EOFError:
        return  # the driver is gone
    finally:
        loop.close()
        backend.close()  # servers it started
    t0 = time.perf_counter()
    del backend
    gc.collect()
    free_memory()
    loop.send(Unloaded(time.perf_counter() - t0))
