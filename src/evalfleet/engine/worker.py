"""Worker processes: each loads one model replica (on 0, 1 or k GPUs) once and answers chunks.

It speaks `evalfleet.engine.messages` over a private pipe (one per worker, so a dying worker cannot corrupt a
shared queue): `Work` in, `Ready`, `Results`, `Step`, `Heartbeat`, `Unloaded` or `Fatal` out.
"""

from __future__ import annotations

import gc
import queue
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import evalfleet.bytecode  # noqa: F401  # before torch and transformers, in the fork server and spawned workers
from evalfleet.data.images import open_image
from evalfleet.engine.messages import Fatal, FromWorker, Heartbeat, Ready, Results, Step, Stop, Unloaded, Work
from evalfleet.engine.replica import limit_address_space, load_replica, setup_process
from evalfleet.engine.sessions import Held, serve_sessions
from evalfleet.engine.streaming import run_stream
from evalfleet.records import Result, Sample, WorkerSpec

if TYPE_CHECKING:
    from evalfleet.backends import Backend, Prepared, Stream

GROW_AFTER = 8
"""Successful batches in a row after which a batch size halved by out-of-memory doubles again."""
HEARTBEAT_S = 2.0
"""Seconds between a worker's heartbeats: a worker silent for much longer is hung (stopped, or stuck holding the
interpreter) and is replaced by its driver."""


class BatchSizer:
    """Batch size that halves on out-of-memory (down to 1) and doubles back after GROW_AFTER successes."""

    def __init__(self, start: int) -> None:
        self.max = self.size = start
        self.streak = 0

    def shrink(self, failed: int) -> None:
        """A batch of `failed` samples ran out of memory: try half of it."""
        self.size, self.streak = max(1, min(self.size, failed) // 2), 0

    def succeeded(self) -> None:
        self.streak += 1
        if self.streak >= GROW_AFTER and self.size < self.max:
            self.size, self.streak = min(self.max, self.size * 2), 0


@dataclass
class ReadyBatch:
    """A batch after the CPU stage: images decoded, inputs prepared (or why that failed)."""

    batch: Work
    """Samples of one chunk to answer together."""
    errors: list[Result]
    """Samples whose images could not be read."""
    samples: list[Sample]
    """Samples going to the device."""
    prepared: Prepared | None = None
    failure: tuple[str, str] | None = None
    """(message, traceback) when preparing raised."""


def prepare_batch(backend: Backend, batch: Work) -> ReadyBatch:
    """CPU stage of a batch: decode images and let the backend tokenize and preprocess."""
    from evalfleet.backends import Request

    ready = ReadyBatch(batch, [], [])
    requests = []
    for s in batch.samples:
        try:
            images = [open_image(ref) for ref in s.images]
        except ValueError as err:
            ready.errors.append(Result(s.dataset, s.id, None, str(err)))
            continue
        name = f"{s.dataset}/{s.id}"
        requests.append(Request(s.prompt, images, batch.seed ^ zlib.crc32(name.encode()), name, s.context))
        ready.samples.append(s)
    if requests:
        try:
            ready.prepared = backend.prepare(requests)
        except Exception as err:
            ready.failure = (f"{type(err).__name__}: {err}", traceback.format_exc())
    return ready


def generate_batch(backend: Backend, ready: ReadyBatch, log: list[str]) -> list[Result]:
    """Device stage: out-of-memory propagates to the caller; any other error fails the batch's samples."""
    from evalfleet.backends import ReplicaLost, is_out_of_memory

    if not ready.samples:
        return ready.errors
    t0 = time.perf_counter()
    try:
        if ready.failure is not None:
            raise RuntimeError(ready.failure[0])
        assert ready.prepared is not None
        gens = backend.generate(ready.prepared)
    except Exception as err:
        if is_out_of_memory(err) or isinstance(err, ReplicaLost):
            raise
        first = f"{ready.samples[0].dataset}/{ready.samples[0].id}"
        tb = ready.failure[1] if ready.failure else traceback.format_exc()
        log.append(f"batch of {len(ready.samples)} starting at {first} failed:\n{tb}")
        message = ready.failure[0] if ready.failure else f"{type(err).__name__}: {err}"
        return ready.errors + [Result(s.dataset, s.id, None, message) for s in ready.samples]
    per_sample = (time.perf_counter() - t0) / len(ready.samples)
    return ready.errors + [
        Result(s.dataset, s.id, None if g.error else g.text, g.error, None, per_sample, g.n_tokens, prompt)
        for s, g, prompt in zip(ready.samples, gens, ready.prepared.prompts)
    ]


class WorkerLoop:
    """Receives chunks, cuts them into batches of the current size, prepares the next batch on a thread
    while the device generates the current one, and sends results batch by batch.

    A daemon thread reads the pipe as messages come (the driver's sends never wait for this worker), into
    `inbox`; the prefetch thread takes the next batch from it, waiting for the driver if need be, and prepares
    it while the main thread generates: the next batch is ready however late the driver's chunk arrives."""

    backend: Backend
    """Set by `start`."""

    def __init__(self, conn: Connection, batch_size: int) -> None:
        self.conn = conn
        self.sizer = BatchSizer(batch_size)
        self.pending: deque[Work] = deque()
        self.log: list[str] = []  # lines for the driver's log, sent with the next results
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.prefetch = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        self.stopping = False
        self.keep = False
        """The driver's stop said to stay loaded for a later stage (`Stop.keep`)."""
        self.stop_said = threading.Event()
        """The driver said stop. It says so at the end only once every result is in, so a batch still queued or
        prepared then was cut short by a signal or an error: it is not started."""
        self.preparing = threading.Lock()
        self.sending = threading.Lock()  # the main thread's results and the heartbeat thread share the pipe
        self.ended = threading.Event()
        threading.Thread(target=self._receive, name="receive", daemon=True).start()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def send(self, msg: FromWorker) -> None:
        with self.sending:
            self.conn.send(msg)

    def _heartbeat(self) -> None:
        while not self.ended.wait(HEARTBEAT_S):
            try:
                self.send(Heartbeat())
            except (OSError, ValueError):  # the driver is gone, or the pipe closed
                return

    def _receive(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError) as err:  # the driver is gone
                self.inbox.put(EOFError(str(err)))
                return
            if isinstance(msg, Stop):
                self.keep = msg.keep
                self.stop_said.set()
            self.inbox.put(msg)
            if isinstance(msg, Stop):
                return

    def take(self) -> Work | None:
        """The next batch, waiting for the driver's next chunk if none is queued; None once the driver said stop."""
        if self.stop_said.is_set():
            return None
        while not self.pending:
            if self.stopping:
                return None
            msg = self.inbox.get()
            if isinstance(msg, EOFError):
                raise msg
            if isinstance(msg, Stop):
                self.stopping = True
                return None
            self.pending.append(msg)
        head = self.pending[0]
        n = self.sizer.size
        if len(head.samples) > n:
            self.pending[0] = Work(head.chunk_id, head.samples[n:], head.seed)
        else:
            self.pending.popleft()
        return Work(head.chunk_id, head.samples[:n], head.seed)

    def _prepare(self, batch: Work) -> ReadyBatch:
        with self.preparing:  # tokenizers set their padding per call: one batch at a time
            return prepare_batch(self.backend, batch)

    def next_batch(self) -> Future[ReadyBatch | None]:
        """The next batch, taken and prepared on the prefetch thread."""
        return self.prefetch.submit(lambda: None if (b := self.take()) is None else self._prepare(b))

    def start(self, backend: Backend) -> Future[ReadyBatch | None]:
        """Prepare the first batch with `backend` on the prefetch thread (the driver sends a worker its first
        chunk as it starts it), while the main thread loads the model."""
        self.backend = backend
        return self.next_batch()

    def run(self, first: Future[ReadyBatch | None], stream: Stream | None = None) -> None:
        if stream is not None:
            return run_stream(self, stream, first)
        job = first
        while (ready := job.result()) is not None and not self.stop_said.is_set():
            job = self.next_batch()  # prepared while this one generates
            self.send(Results(ready.batch.chunk_id, self._answer(ready), self.log[:]))
            self.log.clear()
        self.prefetch.shutdown()

    def _answer(self, ready: ReadyBatch) -> list[Result]:
        """The batch's results; after out-of-memory, those of its parts at the halved size, prepared here, down to
        single samples."""
        from evalfleet.backends import free_memory, is_out_of_memory

        try:
            results = generate_batch(self.backend, ready, self.log)
            self.sizer.succeeded()
            return results
        except Exception as err:
            if not is_out_of_memory(err):
                raise  # the replica is lost: the driver requeues what this worker held
        free_memory()
        batch = ready.batch
        if len(batch.samples) == 1:
            s = batch.samples[0]
            self.log.append(f"{s.dataset}/{s.id} does not fit in memory even alone")
            return [Result(s.dataset, s.id, None, "out of memory even in a batch of 1 "
                           f"({len(s.prompt)} prompt characters, {len(s.images)} image(s))")]
        self.sizer.shrink(len(batch.samples))
        n = self.sizer.size
        self.log.append(f"out of memory at batch size {len(batch.samples)}: halving to {n}")
        return [r for i in range(0, len(batch.samples), n)
                for r in self._answer(self._prepare(Work(batch.chunk_id, batch.samples[i : i + n], batch.seed)))]

    def close(self) -> None:
        """Stop the heartbeat; release a prefetch thread waiting for a chunk (the worker is ending on an error)."""
        self.ended.set()
        self.inbox.put(Stop())
        self.prefetch.shutdown(wait=False, cancel_futures=True)


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
        loop.run(first, stream)
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
