"""Worker processes started before the plan (issue 20, item 2): the driver spawns them as `evalfleet run` begins,
so that their interpreter start and imports (torch, transformers: seconds) overlap the driver's reading of the
datasets and planning. Each then waits for its replica's spec; one the plan does not need is told to exit.

CUDA is not initialised by the imports, so a process can still be pinned to its GPUs (`CUDA_VISIBLE_DEVICES`)
once its spec arrives.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from evalfleet.backends.kinds import kind
from evalfleet.engine.launcher import LocalLauncher, WorkerProcess, in_environment, worker_context
from evalfleet.engine.messages import Heartbeat
from evalfleet.engine.replica import die_with_parent
from evalfleet.engine.worker import worker_main
from evalfleet.engine.worker_loop import HEARTBEAT_S
from evalfleet.records import WorkerSpec
from evalfleet.stopping import ignore_stop_signals

if TYPE_CHECKING:
    from evalfleet.config import RunConfig


def prewarmed_main(conn: Connection, heavy: bool) -> None:
    """Import what loading a model needs (`heavy`: torch and transformers), then become the worker the driver
    names, or exit if it sends None. It sends heartbeats from the start, as a worker does: the driver may hand it
    its spec before the imports are done, and a worker silent for `hang_seconds` is killed as hung."""
    started = time.time()
    die_with_parent()
    ignore_stop_signals()
    named = threading.Event()

    def heartbeat() -> None:
        while not named.wait(HEARTBEAT_S):
            try:
                conn.send(Heartbeat())
            except (OSError, ValueError):
                return

    beating = threading.Thread(target=heartbeat, name="heartbeat", daemon=True)
    beating.start()
    if heavy:
        import evalfleet.engine.preload  # noqa: F401
    imported = time.time() - started
    try:
        job = conn.recv()
    except (EOFError, OSError):
        return
    named.set()
    beating.join()  # the worker's own heartbeat takes over: one sender at a time
    if job is not None:
        worker_main(conn, *job, prewarmed=(started, imported))


class Prewarmed:
    """A launcher that hands out the processes it spawned at once, then spawns as `LocalLauncher` does."""

    def __init__(self, n: int, heavy: bool) -> None:
        self.spare: list[tuple[mp.Process, Connection]] = []
        self.closed = False
        self.lock = threading.Lock()  # `close` and the spawning thread
        self.fallback = LocalLauncher()
        # Started from a thread: the first start waits for the fork server's imports, which the driver's reading of
        # the datasets and planning overlap.
        self.spawning = threading.Thread(target=self._spawn, args=(n, heavy), name="evalfleet-prewarm", daemon=True)
        self.spawning.start()

    def _spawn(self, n: int, heavy: bool) -> None:
        ctx = worker_context(heavy)
        env = dict(os.environ)
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=in_environment, args=(env, prewarmed_main, child, heavy),
                               name=f"evalfleet-prewarmed-{i}", daemon=True)
            proc.spawned_at = time.time()  # type: ignore[attr-defined]  # its process start counts from here
            proc.start()
            child.close()
            with self.lock:
                if not self.closed:
                    self.spare.append((proc, parent))
                    continue
            parent.send(None)  # the run ended (refused) meanwhile
            parent.close()

    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str
              ) -> tuple[WorkerProcess, Connection]:
        self.spawning.join()
        while self.spare:
            proc, conn = self.spare.pop(0)
            try:
                conn.send((spec, model_json, batch_size, output_dir))
                return proc, conn
            except OSError:  # it died before it was needed
                proc.join(0)
        return self.fallback.start(spec, model_json, batch_size, output_dir)

    def close(self) -> None:
        """Tell the processes no replica needed to exit (each does once its imports are done; not waited for)."""
        with self.lock:
            self.closed, spare, self.spare = True, self.spare, []
        for _, conn in spare:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()


def prewarm(cfg: RunConfig) -> Prewarmed | None:
    """Processes for the first stage's replicas, as many as it may use (one per GPU it may use, or its CPU
    workers); None where its workers start otherwise (Ray, another Python, served replicas)."""
    from evalfleet.plan.placement import probe_machine

    stage = cfg.pipeline()[0]
    if cfg.cluster.backend != "local" or stage.python or cfg.python:
        return None
    gpus = stage.gpus if stage.gpus is not None else cfg.gpus
    machine = probe_machine()
    on_cpu = not machine.gpus or (cfg.workers is not None and gpus is None)
    n = (cfg.workers or 1) if on_cpu else len(gpus) if gpus is not None else len(machine.gpus)
    backend = kind(stage.model.backend)
    if backend.remote:  # one worker sends the requests
        n = 1
    return Prewarmed(n, heavy=backend.imports_torch)
