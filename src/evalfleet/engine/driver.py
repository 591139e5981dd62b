"""One stage's driver: starts and replaces its workers, hands them chunks from the work queue, buffers their
results and commits them (it is the store's single writer), holds and renews its leases, and refills its queue
with what other drivers left. `engine.loop` serves every running stage's drivers in one event loop.

A stage is an operator: its inputs are given at the start, or `offer`ed as they come (a judge fed by its
answering stage) until `close_inputs`; each commit is passed on to `on_commit` (the next stage's feed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from evalfleet.config import RunConfig, StageConfig
from evalfleet.engine.handle import WorkerHandle
from evalfleet.engine.launcher import Kept, Launcher
from evalfleet.engine.messages import (
    PROTOCOL,
    Fatal,
    FromWorker,
    GivenBack,
    Heartbeat,
    Ready,
    Results,
    Step,
    Stop,
    TakeBack,
    Unloaded,
    Work,
)
from evalfleet.engine.queue import Chunk, WorkQueue, make_chunks
from evalfleet.errors import RunError, UserError, exception_text
from evalfleet.observe.performance import Performance
from evalfleet.observe.progress import RunProgress
from evalfleet.observe.shown import show_results
from evalfleet.records import Result, Sample, WorkerSpec
from evalfleet.scoring import stage_scorer
from evalfleet.store import Store, quietly

log = logging.getLogger("evalfleet")

MAX_RESTARTS = 3
"""Replacements per worker slot before the slot is given up."""
MAX_CHUNK_ATTEMPTS = 2
"""Workers that may die holding one chunk before its samples are recorded as errors."""
COMMIT_EVERY_S = 1.0
STOP_GRACE_S = 5.0
"""After a stop signal: seconds all workers together get to send the batch they are on and unload, before
they are killed (Slurm's grace before SIGKILL is 30 s by default)."""
UNLOAD_S = 60.0
"""Seconds all workers together get to unload at the end of a stage before they are killed."""
HEARTBEAT_STORE_S = 10.0
"""Seconds between heartbeats a driver writes to the store for itself and for each worker (for `status`)."""


@dataclass
class StageDriver:
    cfg: RunConfig
    stage: StageConfig
    store: Store
    queue: WorkQueue
    progress: RunProgress
    launcher: Launcher
    batch_size: int
    chunk_size: int
    specs: list[WorkerSpec]
    """The replicas to start."""
    inputs: dict[str, list[Sample]]
    """Every sample of the stage known so far, by dataset: what is left of them is re-queued when the queue
    runs dry (samples another driver leased and then gave up)."""
    owner: str
    """This driver's name on its leases."""
    open_inputs: bool = False
    """More inputs may be offered (a judge fed while its answerer still runs): the queue must not close yet."""
    on_commit: Callable[[list[Result]], None] | None = None
    """Called with each batch of results once they are in the store (a stage fed by this one)."""
    on_finish: Callable[[], None] | None = None
    """Called once every sample of the stage has a result, before its workers stop."""
    workers: dict[str, WorkerHandle] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    buffer: list[Result] = field(default_factory=list)
    worker_counts: dict[WorkerHandle, int] = field(default_factory=dict)
    last_commit: float = field(default_factory=time.monotonic)
    last_renew: float = field(default_factory=time.monotonic)
    last_refill: float = 0.0
    perf: Performance = field(default_factory=Performance)
    stopped: bool = False
    keep: list[Kept] | None = None  # a later stage uses the same weights: its workers, kept loaded at the end
    asked: dict[str, int] = field(default_factory=dict)
    """Worker -> the chunk it was asked to give back part of (`TakeBack`), until its `GivenBack`."""
    exhausted: set[tuple[str, int]] = field(default_factory=set)
    """(worker, chunk) pairs that gave nothing back: every sample had started."""

    def __post_init__(self) -> None:
        self.samples = {(s.dataset, s.id): s for samples in self.inputs.values() for s in samples}  # for scoring
        self.score = stage_scorer(self.stage, self.cfg)

    # -- inputs -------------------------------------------------------------------------------
    def offer(self, chunks: list[list[Sample]], settled: int = 0) -> None:
        """More work: `chunks` to queue, and `settled` samples given a result without a worker (cache hits,
        errors)."""
        if settled:
            self.progress.advance("-", settled)
        if chunks:
            self.samples.update({(s.dataset, s.id): s for chunk in chunks for s in chunk})
            self.queue.add(chunks)
            for w in self.workers.values():
                if w.ready:
                    self.feed(w)

    def close_inputs(self) -> None:  # no more inputs: the queue may close once every sample has a result
        self.open_inputs = False

    # -- worker lifecycle ---------------------------------------------------------------------
    def start(self, spec: WorkerSpec) -> None:
        spawned = time.time()
        proc, conn = self.launcher.start(spec, self.stage.model.model_dump_json(), self.batch_size,
                                         str(self.cfg.run_dir))
        spawned = getattr(proc, "spawned_at", spawned)  # a process spawned before the plan (prewarm.py): then
        w = WorkerHandle(spec, proc, conn, self.restarts.get(spec.name, 0), t_spawn_wall=spawned)
        self.workers[spec.name] = w
        self.queue.register(spec.name)
        self.store.worker_state(self.key(w), device=spec.name, pid=proc.pid, state="loading")
        log.info("started worker %s (pid %s)", w.id, proc.pid)

    def launch(self) -> None:
        """Start the workers, then feed them at once (all registered first, so the queue shares chunks fairly): a
        worker prepares its first batch while its model loads."""
        for spec in self.specs:
            self.start(spec)
        for spec in self.specs:
            self.feed(self.workers[spec.name])

    def feed(self, w: WorkerHandle) -> None:
        if not self.queue.held.get(w.spec.name):
            w.last_progress = time.monotonic()  # its stall clock starts with its work
        while (chunk := self.queue.assign(w.spec.name)) is not None:
            mine = self.store.claim(self.stage.name, chunk.samples[0].dataset, [s.id for s in chunk.samples],
                                    self.owner, self.cfg.lease_seconds)
            others = {s.id for s in chunk.samples} - mine
            if others:  # done or leased by another driver on this run
                self.queue.finish_samples(w.spec.name, chunk.id, others)
                if not mine:
                    continue
            try:
                w.conn.send(Work(chunk.id, chunk.samples, self.cfg.seed))
            except (BrokenPipeError, OSError):
                return  # it died; its sentinel reports it and the chunk is requeued
        if w.ready and not self.queue.held.get(w.spec.name) and not self.queue.pending:
            self.take_back()

    def take_back(self) -> None:
        """A worker is idle and nothing is pending: ask the ready worker holding the most samples to give back the
        later half of those of its last chunk it has not started (one request at a time; `handle` requeues what
        comes back and feeds the idle). So the run ends when the work does, not when the fullest queue does."""
        if self.asked:
            return
        ready = {name for name, w in self.workers.items() if w.ready}
        if (ask := self.queue.to_ask(ready, self.exhausted)) is None:
            return
        name, chunk_id = ask
        try:
            self.workers[name].conn.send(TakeBack(chunk_id))
        except (BrokenPipeError, OSError):
            return  # it died: its chunks go back to the queue anyway
        self.asked[name] = chunk_id

    def on_death(self, w: WorkerHandle) -> None:
        """Requeue the dead worker's chunks and start a replacement (up to MAX_RESTARTS per slot)."""
        w.proc.join(timeout=5)
        code = w.proc.exitcode
        self.workers.pop(w.spec.name)
        self.perf.worker_usage(w.id, w.usage())
        state = f"{w.hung}, replaced" if w.hung else f"died ({code})"
        self.store.worker_state(self.key(w), device=w.spec.name, pid=w.proc.pid, state=state)
        chunks = self.queue.release(w.spec.name, answering=w.ready)
        self.asked.pop(w.spec.name, None)
        if not w.hung:
            self.progress.note(f"worker {w.id} died (exit code {code}); {sum(len(c.samples) for c in chunks)} "
                               "samples go back to the queue")
            log.warning("worker %s died with exit code %s", w.id, code)
        for chunk in chunks:
            if chunk.attempts >= MAX_CHUNK_ATTEMPTS:
                self.queue.drop(chunk)
                self.fail_chunk(chunk, f"{chunk.attempts} workers died while answering this batch (last exit code {code})")
        self.restarts[w.spec.name] = self.restarts.get(w.spec.name, 0) + 1
        if self.restarts[w.spec.name] <= MAX_RESTARTS and not self.queue.finished:
            self.start(w.spec)  # fed once ready: ready peers take the requeued chunks meanwhile
        elif not self.workers:
            raise RunError(f"every worker of stage {self.stage.name} died ({MAX_RESTARTS} replacements each; the "
                           f"last exit code was {code}); the reasons are in the run's log. Results so far are saved: "
                           "run the same command again to resume")

    def fail_chunk(self, chunk: Chunk, reason: str) -> None:
        self.buffer += [Result(s.dataset, s.id, None, reason) for s in chunk.samples]
        self.progress.advance("-", len(chunk.samples))

    # -- messages -----------------------------------------------------------------------------
    def handle(self, w: WorkerHandle, msg: FromWorker) -> None:
        w.last_seen = time.monotonic()
        match msg:
            case Heartbeat() if w.ready:  # `status` tells idle from silent, and from hung
                state = "running" if self.queue.held.get(w.spec.name) else "idle"
                if state != w.stored_state or w.last_seen - w.last_stored > HEARTBEAT_STORE_S:
                    w.last_stored, w.stored_state = w.last_seen, state
                    self.store.worker_state(self.key(w), device=w.spec.name, pid=w.proc.pid, state=state)
            case Ready(device, load_s, python, protocol, phases, started):
                if protocol != PROTOCOL:
                    raise UserError(f"worker {w.id} speaks protocol {protocol}, this driver {PROTOCOL}: the stage's "
                                    "Python environment has another evalfleet version; install the same one there")
                w.ready, w.t_ready, w.python = True, time.monotonic(), python
                self.store.worker_state(self.key(w), device=device, pid=w.proc.pid, state="running")
                self.progress.worker(w.spec.name, device)
                log.info("worker %s ready on %s after %.1f s (python %s)", w.id, device, load_s, python)
                phases = {"process start": round(max(0.0, started - w.t_spawn_wall), 3), **phases} if started else phases
                if line := self.perf.loaded(w.id, load_s, all(x.ready for x in self.workers.values()), phases):
                    self.progress.note(line)
                self.feed(w)
            case Results():
                self.take_results(w, msg)
                self.feed(w)
            case GivenBack(chunk_id, sample_ids):
                self.asked.pop(w.spec.name, None)
                if sample_ids:
                    self.queue.take_back(w.spec.name, chunk_id, set(sample_ids))
                    log.info("worker %s gave back %d samples for an idle worker", w.id, len(sample_ids))
                else:
                    self.exhausted.add((w.spec.name, chunk_id))
                for x in list(self.workers.values()):
                    if x.ready and not self.queue.held.get(x.spec.name):
                        self.feed(x)
            case Step(step, steps):
                self.progress.step(w.spec.name, step, steps)
            case Fatal(tb):
                log.error("worker %s failed to start:\n%s", w.id, tb)
                raise UserError(f"worker {w.id} could not load the model {self.stage.model.path} (the traceback "
                                f"is in the run's log):\n{exception_text(tb)}")

    def take_results(self, w: WorkerHandle, msg: Results) -> None:
        """Buffer a batch's results for the next commit."""
        w.last_progress = time.monotonic()
        for text in msg.log:
            log.warning("[%s] %s", w.id, text)
        for r in msg.results:
            r.worker = w.id
            if r.error:
                log.warning("sample %s/%s: %s", r.dataset, r.sample_id, r.error)
            elif (s := self.samples.get((r.dataset, r.sample_id))) is not None:
                r.score = self.score(r.dataset, r.output, s.answers, s.metadata)
        self.queue.finish_samples(w.spec.name, msg.chunk_id, {r.sample_id for r in msg.results})
        w.busy_s += sum(r.seconds or 0.0 for r in msg.results)
        self.perf.answered(msg.results, msg.counts, w.id)
        self.buffer += msg.results
        if self.cfg.show_samples:
            show_results(self.progress, self.stage.kind, self.cfg.metrics[0], w.spec.name, msg.results)
        self.worker_counts[w] = self.worker_counts.get(w, 0) + len(msg.results)
        self.progress.advance(w.spec.name, len(msg.results))

    def commit(self, force: bool = False) -> None:
        if self.buffer and (force or time.monotonic() - self.last_commit >= COMMIT_EVERY_S):
            self.store.add_results(self.stage.name, self.buffer)
            for w, n in self.worker_counts.items():
                self.store.worker_progress(self.key(w), n)
            committed, self.buffer, self.worker_counts = self.buffer, [], {}
            self.last_commit = time.monotonic()
            if self.on_commit is not None:
                self.on_commit(committed)

    def maintain(self) -> None:
        """Renew this driver's leases; when its queue ran dry, queue what is still unfinished (another driver
        may have left it) or close the queue once every sample has a result."""
        now = time.monotonic()
        if now - self.last_renew > min(self.cfg.lease_seconds / 4, HEARTBEAT_STORE_S):
            self.store.check_same_file()  # never write on into a store that `--fresh` replaced
            self.store.renew(self.owner, self.cfg.lease_seconds)
            self.store.driver_heartbeat(self.owner)
            self.last_renew = now
        self.watch(now)
        busy = self.queue.pending or any(self.queue.held.values())
        if busy or self.open_inputs or self.queue.closed or now - self.last_refill < 2:
            return  # a judge fed as answers arrive is refilled by its feed until the answerer is done
        self.last_refill = now
        self.commit(force=True)
        parts, finished = [], 0
        for name, samples in self.inputs.items():
            done = self.store.done_ids(self.stage.name, name)
            finished += sum(1 for s in samples if s.id in done or s.error)
            parts += [c.samples for c in make_chunks(samples, done, self.chunk_size)]
        if finished > self.progress.done:  # other drivers' work
            self.progress.advance("-", finished - self.progress.done)
        if parts:
            self.offer(parts)
        else:
            self.queue.close()

    def watch(self, now: float) -> None:
        """Kill a worker that sent nothing, not even a heartbeat, for `hang_seconds` (stopped, or stuck holding the
        interpreter), or that held work without finishing any for `stall_seconds` (stuck in a kernel): its death
        then requeues its chunks and starts a replacement, as for any dead worker."""
        for w in list(self.workers.values()):
            silent = now - w.last_seen
            stalled = now - w.last_progress if w.ready and self.queue.held.get(w.spec.name) else 0.0
            if w.hung:
                continue
            if silent > self.cfg.hang_seconds:
                w.hung = f"hung (no heartbeat for {silent:.0f} s)"
            elif stalled > self.cfg.stall_seconds:
                w.hung = f"stalled (no result for {stalled:.0f} s)"
            else:
                continue
            held = sum(len(c.samples) for c in self.queue.held.get(w.spec.name, []))
            self.progress.note(f"worker {w.id} is {w.hung}: killed and replaced; its {held} samples are requeued")
            log.warning("worker %s is %s: killing it", w.id, w.hung)
            self.store.worker_state(self.key(w), device=w.spec.name, pid=w.proc.pid, state=w.hung)
            w.proc.kill()  # SIGKILL ends a stopped process too; its sentinel brings it to `reap`

    def reap(self, w: WorkerHandle) -> None:
        """A worker process ended: take the results it sent just before, then requeue and replace it."""
        while w.conn.poll():
            try:
                self.handle(w, w.conn.recv())
            except (EOFError, OSError):
                break
        if self.workers.get(w.spec.name) is w:
            self.on_death(w)

    def finish(self) -> None:
        """Every sample has a result: store them, record throughput, tell the listener, unload the models."""
        self.commit(force=True)
        self.perf.generation_done()
        if self.progress.monitor is not None:
            self.perf.data["gpu_util_mean"] = self.progress.monitor.mean_util()
        if self.on_finish is not None:
            self.on_finish()
        self.progress.flush()
        self.store.release(self.owner)
        self.stop()

    def shutdown(self) -> None:
        """The loop ended (done, a stop signal or an error): save what arrived, stop the workers that still run
        within STOP_GRACE_S, save what they sent meanwhile and give back this driver's leases. Each step is tried
        even when the store fails (a full disk): the workers are stopped whatever happens."""
        self.on_commit = None  # a judge resumes from the store, it needs no feeding now
        quietly(self.commit, True)
        if not self.stopped:
            self.stop(STOP_GRACE_S)
            quietly(self.commit, True)
        quietly(self.store.release, self.owner)
        self.progress.close()
        quietly(self.store.set_meta, f"performance:{self.stage.name}", self.perf.data)

    def key(self, w: WorkerHandle) -> str:
        """The worker's row in the store's workers table: stage/worker@host:driver-pid (drivers may share a run)."""
        return f"{self.stage.name}/{w.id}@{self.owner.rsplit(':', 1)[0]}"

    def stop(self, grace: float | None = None) -> None:
        """Ask every worker to unload at once, collect their unload times, then reap them (at the end of a stage
        whose weights a later one uses, `keep`: hand them over loaded). `grace`: after a stop signal, the seconds
        all workers together get, after which the rest are killed; results they send meanwhile (the batch they
        were on) are buffered for the final commit. Without it they get UNLOAD_S to unload."""
        self.stopped = True
        keep = self.keep is not None and grace is None
        t0 = time.monotonic()
        deadline = t0 + (UNLOAD_S if grace is None else grace)
        for w in self.workers.values():
            w.t_stop = time.monotonic()
            try:
                w.conn.send(Stop(keep))
            except (BrokenPipeError, OSError):
                pass
        for w in self.workers.values():
            unloaded = False
            try:
                while not unloaded and w.conn.poll(max(0.0, deadline - time.monotonic())):
                    match msg := w.conn.recv():
                        case Results():
                            self.take_results(w, msg)
                        case Unloaded(seconds):
                            self.perf.unloaded(w.id, seconds)
                            unloaded = True
            except (EOFError, OSError):
                pass
            if keep and unloaded and self.keep is not None and w.proc.is_alive():  # loaded, for the next stage
                self.keep.append((w.spec, w.proc, w.conn))
            else:
                w.proc.join(timeout=max(0.1, deadline - time.monotonic()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join(timeout=5)
            self.perf.worker_usage(w.id, w.usage())
            quietly(self.store.worker_state, self.key(w), device=w.spec.name, pid=w.proc.pid,
                    state="kept for the next stage" if self.keep and self.keep[-1][2] is w.conn else "stopped")
        if line := self.perf.stopped(t0):
            self.progress.note(line)
