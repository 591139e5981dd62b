"""The driver: loads datasets, starts workers, feeds the dynamic queue, and is the store's single writer.

Reads top to bottom as `run()`: 1. open the store, 2. load datasets, 3. run each stage (plan the
placement, cut chunks of what is left, start workers, hand out chunks and commit results, stop the
workers), 4. report.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import secrets
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from statistics import fmean
from typing import Any

from rich.console import Console

from evalfleet.config import ModelConfig, RunConfig, StageConfig
from evalfleet.datasets import Sample
from evalfleet.errors import RunError, UserError
from evalfleet.judging import (
    JudgeFeed,
    close_all,
    fill_cache,
    judge_inputs,
    judge_plan_samples,
    offer_all,
)
from evalfleet.memory import ModelEstimate, estimate_model, longest_prompt_tokens
from evalfleet.placement import (
    Machine,
    Plan,
    describe,
    parse_bytes,
    plan,
    probe_machine,
    split_gpus,
)
from evalfleet.preflight import check_output_dir, read_datasets, refuse_fresh_while_live, refusals
from evalfleet.progress import RunProgress
from evalfleet.report import write_report
from evalfleet.scheduler import Chunk, WorkQueue, make_chunks
from evalfleet.scoring import score_sample
from evalfleet.scoring.judge import parse_judgement
from evalfleet.stopping import Stopped, stop_on_signals
from evalfleet.store import JudgeCache, Result, Store, network_filesystem, store_errors
from evalfleet.workers import WorkerSpec, worker_main

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


@dataclass(eq=False)
class _Worker:
    spec: WorkerSpec
    proc: Any
    conn: Connection
    generation: int
    ready: bool = False
    t_start: float = field(default_factory=time.monotonic)
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

    @property
    def id(self) -> str:
        return f"{self.spec.name}.{self.generation}"

    def usage(self) -> dict[str, Any]:
        """Its life so far: held (process start to now), loading, busy seconds and busy fraction once loaded."""
        now = time.monotonic()
        serving = (self.t_stop or now) - self.t_ready if self.t_ready is not None else 0.0
        return {"device": self.spec.name, "gpus": len(self.spec.gpus), "held_s": round(now - self.t_start, 2),
                "load_s": round((self.t_ready or now) - self.t_start, 2), "busy_s": round(self.busy_s, 2),
                "busy_fraction": round(self.busy_s / serving, 3) if serving > 0 else None}


@dataclass
class _Driver:
    cfg: RunConfig
    stage: StageConfig
    store: Store
    queue: WorkQueue
    progress: RunProgress
    batch_size: int
    chunk_size: int = 0
    ctx: Any = field(default_factory=lambda: mp.get_context("spawn"))
    workers: dict[str, _Worker] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    buffer: list[Result] = field(default_factory=list)
    worker_counts: dict[_Worker, int] = field(default_factory=dict)
    last_commit: float = field(default_factory=time.monotonic)
    t_spawn: float = field(default_factory=time.monotonic)
    t_ready: float = 0.0
    """When every replica had loaded; throughput counts from then."""
    at_ready: tuple[int, int] = (0, 0)
    """(samples, generated tokens) finished before t_ready."""
    specs: list[WorkerSpec] = field(default_factory=list)
    """The replicas to start."""
    inputs: dict[str, list[Sample]] = field(default_factory=dict)
    """Every sample of the stage known so far, by dataset: what is left of them is re-queued when the queue
    runs dry (samples another driver leased and then gave up)."""
    owner: str = ""
    """This driver's name on its leases."""
    lease_s: float = 120.0
    open_inputs: bool = False
    """More inputs may come (a judge fed while its answerer still runs): the queue must not close yet."""
    last_renew: float = field(default_factory=time.monotonic)
    last_refill: float = 0.0
    samples: dict[tuple[str, str], Sample] = field(default_factory=dict)
    """Samples by (dataset, sample id), for --show-samples lines."""
    on_commit: Callable[[list[Result]], None] | None = None
    """Called with each batch of results once they are in the store (a judge running at the same time)."""
    on_finish: Callable[[], None] | None = None
    """Called once every sample of the stage has a result, before its workers stop."""
    stopped: bool = False
    perf: dict[str, Any] = field(
        default_factory=lambda: {"load_s": {}, "unload_s": {}, "workers": {}, "samples": 0, "generated_tokens": 0}
    )
    """Model load and unload seconds per worker, the wall time of loading/unloading them all, each worker's
    usage (`_Worker.usage`), throughput once all were loaded, the stage's wall time and GPU-hours."""

    # -- worker lifecycle ---------------------------------------------------------------------
    def start(self, spec: WorkerSpec) -> None:
        generation = self.restarts.get(spec.name, 0)
        args = (spec, self.stage.model.model_dump_json(), self.batch_size, str(self.cfg.run_dir))
        if self.cfg.cluster.backend == "ray":
            from evalfleet.cluster.ray import RayProcess

            proc: Any = RayProcess(*args)
            parent = proc.conn
        else:
            parent, child = self.ctx.Pipe()
            proc = self.ctx.Process(target=worker_main, args=(child, *args), name=f"evalfleet-{spec.name}", daemon=True)
            proc.start()
            child.close()
        w = _Worker(spec, proc, parent, generation)
        self.workers[spec.name] = w
        self.queue.register(spec.name)
        self.store.worker_state(self.key(w), device=spec.name, pid=proc.pid, state="loading")
        log.info("started worker %s (pid %s)", w.id, proc.pid)

    def launch(self, specs: list[WorkerSpec]) -> None:
        """Start workers, then feed them at once (all registered first, so the queue shares chunks fairly): a
        worker prepares its first batch while its model loads."""
        for spec in specs:
            self.start(spec)
        for spec in specs:
            self.feed(self.workers[spec.name])

    def feed(self, w: _Worker) -> None:
        if not self.queue.held.get(w.spec.name):
            w.last_progress = time.monotonic()  # its stall clock starts with its work
        while (chunk := self.queue.assign(w.spec.name)) is not None:
            mine = self.store.claim(self.stage.name, chunk.samples[0].dataset, [s.id for s in chunk.samples],
                                    self.owner, self.lease_s)
            others = {s.id for s in chunk.samples} - mine
            if others:  # done or leased by another driver on this run
                self.queue.finish_samples(w.spec.name, chunk.id, others)
                if not mine:
                    continue
            try:
                w.conn.send(("chunk", chunk.id, chunk.samples, self.cfg.seed))
            except (BrokenPipeError, OSError):
                return  # it died; its sentinel reports it and the chunk is requeued

    def on_death(self, w: _Worker) -> None:
        """Requeue the dead worker's chunks and start a replacement (up to MAX_RESTARTS per slot)."""
        w.proc.join(timeout=5)
        code = w.proc.exitcode
        self.workers.pop(w.spec.name)
        self.perf["workers"][w.id] = w.usage()
        state = f"{w.hung}, replaced" if w.hung else f"died ({code})"
        self.store.worker_state(self.key(w), device=w.spec.name, pid=w.proc.pid, state=state)
        chunks = self.queue.release(w.spec.name, answering=w.ready)
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
    def handle(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        w.last_seen = time.monotonic()
        if kind == "heartbeat" and w.ready:  # `status` tells idle from silent, and from hung
            state = "running" if self.queue.held.get(w.spec.name) else "idle"
            if state != w.stored_state or w.last_seen - w.last_stored > HEARTBEAT_STORE_S:
                w.last_stored, w.stored_state = w.last_seen, state
                self.store.worker_state(self.key(w), device=w.spec.name, pid=w.proc.pid, state=state)
        elif kind == "ready":
            w.ready, w.t_ready = True, time.monotonic()
            self.store.worker_state(self.key(w), device=msg[1], pid=w.proc.pid, state="running")
            self.progress.worker(w.spec.name, msg[1])
            log.info("worker %s ready on %s after %.1f s", w.id, msg[1], msg[2])
            self.perf["load_s"][w.id] = round(msg[2], 2)
            if "load_wall_s" not in self.perf and all(x.ready for x in self.workers.values()):
                self.t_ready = time.monotonic()
                self.at_ready = (self.perf["samples"], self.perf["generated_tokens"])
                self.perf["load_wall_s"] = round(self.t_ready - self.t_spawn, 2)
                each = ", ".join(f"{v:.1f}" for v in self.perf["load_s"].values())
                self.progress.note(f"{len(self.workers)} replica(s) ready in {self.perf['load_wall_s']:.1f} s wall "
                                   f"(process start included); model load per replica: {each} s")
            self.feed(w)
        elif kind == "results":
            self.take_results(w, msg)
            self.feed(w)
        elif kind == "step":
            self.progress.step(w.spec.name, msg[1], msg[2])
        elif kind == "fatal":
            log.error("worker %s failed to start:\n%s", w.id, msg[1])
            last = msg[1].strip().splitlines()[-1]
            raise UserError(f"worker {w.id} could not load the model {self.stage.model.path}: {last}")

    def take_results(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        """A ("results", chunk_id, results, log lines) message: buffer the results for the next commit."""
        _, chunk_id, results, logs = msg
        w.last_progress = time.monotonic()
        for text in logs:
            log.warning("[%s] %s", w.id, text)
        for r in results:
            r.worker = w.id
            if r.error:
                log.warning("sample %s/%s: %s", r.dataset, r.sample_id, r.error)
        self.queue.finish_samples(w.spec.name, chunk_id, {r.sample_id for r in results})
        w.busy_s += sum(r.seconds or 0.0 for r in results)
        self.perf["samples"] += len(results)
        self.perf["generated_tokens"] += sum(r.n_tokens or 0 for r in results)
        self.buffer += results
        if self.cfg.show_samples:
            self.show(w, results)
        self.worker_counts[w] = self.worker_counts.get(w, 0) + len(results)
        self.progress.advance(w.spec.name, len(results))

    def show(self, w: _Worker, results: list[Result]) -> None:
        """--show-samples: a line per sample with its score (judge score, or the first metric), then the batch mean."""
        values = []
        for r in results:
            text = (r.output or "").replace("\n", " ")[:100]
            if r.error is not None:
                line = f"error | {r.error[:100]}"
            elif self.stage.kind == "judge":
                j = parse_judgement(r.output or "", self.stage.parse)
                line = f"score {j.score:.2f} | {text}" if j.score is not None else f"unparsed ({j.error}) | {text}"
                values += [j.score] if j.score is not None else []
            else:
                metric, s = self.cfg.metrics[0], self.samples[(r.dataset, r.sample_id)]
                steps = next((d.extract for d in self.cfg.datasets if d.name == r.dataset), None)
                value = score_sample(r.output or "", s.answers, [metric], steps, s.metadata.get("options"))[2][metric]
                line = f"{metric} {value:.2f} | {text}"
                values.append(value)
            self.progress.note(f"[{w.spec.name}] [{r.dataset}/{r.sample_id}] {line}")
        if values:
            self.progress.note(f"[{w.spec.name}] batch of {len(results)}: mean {fmean(values):.2f} over {len(values)}")

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
        if now - self.last_renew > min(self.lease_s / 4, HEARTBEAT_STORE_S):
            self.store.check_same_file()  # never write on into a store that `--fresh` replaced
            self.store.renew(self.owner, self.lease_s)
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
            self.queue.add(parts)
            for w in self.workers.values():
                if w.ready:
                    self.feed(w)
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
            self.progress.note(f"worker {w.id} is {w.hung}: killed and replaced; its {held} samples go back to "
                               "the queue")
            log.warning("worker %s is %s: killing it", w.id, w.hung)
            self.store.worker_state(self.key(w), device=w.spec.name, pid=w.proc.pid, state=w.hung)
            w.proc.kill()  # SIGKILL ends a stopped process too; its sentinel brings it to `reap`

    def reap(self, w: _Worker) -> None:
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
        if self.t_ready:  # throughput once every replica was loaded
            wall = time.monotonic() - self.t_ready
            self.perf["generate_wall_s"] = round(wall, 2)
            self.perf["samples_per_s"] = round((self.perf["samples"] - self.at_ready[0]) / wall, 2)
            self.perf["generated_tokens_per_s"] = round((self.perf["generated_tokens"] - self.at_ready[1]) / wall, 1)
        if self.progress.monitor is not None:
            self.perf["gpu_util_mean"] = self.progress.monitor.mean_util()
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
        _quietly(self.commit, True)
        if not self.stopped:
            self.stop(STOP_GRACE_S)
            _quietly(self.commit, True)
        _quietly(self.store.release, self.owner)
        self.progress.close()
        _quietly(self.store.set_meta, f"performance:{self.stage.name}", self.perf)

    def key(self, w: _Worker) -> str:
        """The worker's row in the store's workers table: stage/worker@host:driver-pid (drivers may share a run)."""
        return f"{self.stage.name}/{w.id}@{self.owner.rsplit(':', 1)[0]}"

    def stop(self, grace: float | None = None) -> None:
        """Ask every worker to unload at once, collect their unload times, then reap them.

        `grace`: after a stop signal, the seconds all workers together get, after which the rest are killed;
        results they send meanwhile (the batch they were on) are buffered for the final commit. Without it they
        get UNLOAD_S to unload.
        """
        self.stopped = True
        t0 = time.monotonic()
        deadline = t0 + (UNLOAD_S if grace is None else grace)
        for w in self.workers.values():
            w.t_stop = time.monotonic()
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self.workers.values():
            try:
                while w.conn.poll(max(0.0, deadline - time.monotonic())):
                    msg = w.conn.recv()
                    if msg[0] == "results":
                        self.take_results(w, msg)
                    elif msg[0] == "stopped":
                        self.perf["unload_s"][w.id] = round(msg[1], 3)
                        break
            except (EOFError, OSError):
                pass
            w.proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5)
            self.perf["workers"][w.id] = w.usage()
            _quietly(self.store.worker_state, self.key(w), device=w.spec.name, pid=w.proc.pid, state="stopped")
        used = self.perf["workers"].values()
        self.perf["wall_s"] = round(time.monotonic() - self.t_spawn, 2)
        self.perf["gpu_hours"] = round(sum(u["gpus"] * u["held_s"] for u in used) / 3600, 4)
        if self.perf["unload_s"]:
            self.perf["unload_wall_s"] = round(time.monotonic() - t0, 3)
            self.progress.note(f"{len(self.perf['unload_s'])} replica(s) unloaded in {self.perf['unload_wall_s']:.2f} s "
                               "wall")



def _quietly(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Call a store write while stopping; a failing store is logged (its error was already raised once)."""
    try:
        return fn(*args, **kw)
    except (sqlite3.Error, RunError) as err:
        log.warning("while stopping: %s failed: %s", getattr(fn, "__name__", fn), err)
        return None


def _estimate(model: ModelConfig, samples: list[Sample], on_gpu: bool) -> ModelEstimate | None:
    """Memory estimate from the checkpoint files and the data; None when there is no local config.json."""
    if not (Path(model.path) / "config.json").is_file():
        return None
    sizes = []
    for s in [s for s in samples if s.images][:16]:
        try:
            sizes += [ref.open().size for ref in s.images]
        except ValueError:
            continue  # reported when the sample runs
    texts = ["".join(m["content"] for m in s.context) + s.prompt for s in samples]  # few-shot turns count too
    return estimate_model(
        model.path,
        dtype=model.resolved_dtype(on_gpu=on_gpu),
        max_new_tokens=model.generation.max_new_tokens,
        prompt_tokens=longest_prompt_tokens(model.path, texts),
        image_sizes=sizes,
        images_per_sample=max((len(s.images) for s in samples), default=0),
    )


def make_plan(
    cfg: RunConfig, model: ModelConfig, samples: list[Sample], *, gpus: list[int] | None = None, share: int = 1
) -> tuple[Plan, list[str]]:
    """Probe the machine, estimate `model` on `samples`, choose the layout; returns it with its description.

    `gpus` replaces the run's GPUs (a stage's own set); `share` divides the CPU cores (stages at once).
    """
    if model.backend == "openai":  # the endpoints do the work: one worker sends the requests
        s = model.server
        batch = model.batch_size if model.batch_size != "auto" else 2 * s.max_in_flight * len(s.urls)
        chosen = plan(Machine([], 1), None, workers=1, batch_size=batch)
        chosen.reasons.append(f"openai backend: {len(s.urls)} endpoint(s), up to {s.max_in_flight} requests in "
                              "flight each, from one worker")
        return chosen, [f"plan: {r}" for r in chosen.reasons]
    machine = _machine(cfg)
    machine = replace(machine, cpus=max(1, machine.cpus // share))
    gpus = gpus if gpus is not None else cfg.gpus
    p = cfg.placement
    cap = parse_bytes(p.max_memory_per_gpu) if p.max_memory_per_gpu else None
    on_gpu = bool(machine.gpus) and not (cfg.workers is not None and gpus is None)
    est = _estimate(model, samples, on_gpu) if on_gpu else None
    chosen = plan(machine, est, mode=p.mode, gpus=gpus, workers=cfg.workers,
                  gpus_per_replica=p.gpus_per_replica, max_memory_per_gpu=cap, batch_size=model.batch_size)
    if p.cpu_worker_headroom and chosen.mode == "cpu":
        headroom = parse_bytes(p.cpu_worker_headroom)
        chosen.workers = [replace(w, cpu_headroom=headroom) for w in chosen.workers]
    return chosen, describe(machine, est, chosen)


def _machine(cfg: RunConfig) -> Machine:
    """This machine, or with `cluster.backend: ray` the whole Ray cluster as one pool."""
    if cfg.cluster.backend == "ray":
        from evalfleet.cluster.ray import cluster_machine, connect

        connect(cfg.cluster.address)
        return cluster_machine()
    return probe_machine()


def stage_gpus(cfg: RunConfig) -> list[list[int] | None]:
    """Each stage's GPUs: its own `gpus`, else the run's; with `concurrent_stages`, disjoint shares."""
    stages = cfg.pipeline()
    if not (cfg.concurrent_stages and len(stages) > 1):
        return [s.gpus if s.gpus is not None else cfg.gpus for s in stages]
    n = len(_machine(cfg).gpus)
    if not n or (cfg.workers is not None and cfg.gpus is None):
        return [None] * len(stages)  # CPU: every stage gets its workers, sharing the cores
    return split_gpus(cfg.gpus if cfg.gpus is not None else list(range(n)), [s.gpus for s in stages],
                      [s.name for s in stages])


def check_model_path(path: str) -> None:
    """A model path that looks local must exist (hub ids look like `org/name`)."""
    p = Path(path).expanduser()
    looks_local = p.is_absolute() or path.startswith(".") or path.count("/") != 1
    if looks_local and not p.exists():
        raise UserError(f"model path not found: {path}")


class _RunLog(logging.FileHandler):
    """run.log. When it can no longer be written (a full disk, a failing filesystem) it says so once on stderr and
    stops, instead of printing a traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush failed too
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"[evalfleet] cannot write the log {self.baseFilename} ({sys.exc_info()[1]}); "
                             "logging stops\n")


def _log_to(path: Path) -> logging.Handler:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _RunLog(path)
    except OSError as err:
        raise UserError(f"cannot write the run's log {path}: {err.strerror or err}; check that its folder is "
                        "writable, or point output_dir (--out) elsewhere") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def run(
    cfg: RunConfig,
    *,
    fresh: bool = False,
    retry_errors: bool = False,
    redo: list[str] | None = None,
    console: Console | None = None,
    log_file: Path | None = None,
) -> dict:
    """Run (or resume) the evaluation described by `cfg`; returns the summary.

    `redo` names stages whose stored results are dropped first (e.g. a judge whose settings changed);
    identical judge requests are still answered from the judge cache.

    The full log (with tracebacks of failed batches) goes to `log_file`, by default `RUN_DIR/run.log`.
    """
    console = console or Console()
    names = [stage.name for stage in cfg.pipeline()]
    unknown = sorted(set(redo or []) - set(names))
    if unknown:
        raise UserError(f"--redo {', '.join(unknown)}: no such stage (stages: {', '.join(names)})")
    for stage in cfg.pipeline():
        if stage.model.backend != "openai":  # there, `path` names the served model
            check_model_path(stage.model.path)
    run_dir = cfg.run_dir
    check_output_dir(run_dir)
    if fresh and run_dir.exists():
        refuse_fresh_while_live(run_dir, cfg.lease_seconds)
        shutil.rmtree(run_dir)
    handler = _log_to(log_file or run_dir / "run.log")
    try:
        with stop_on_signals(), store_errors(run_dir / "store.db"):
            return _run(cfg, run_dir, retry_errors, redo or [], console)
    except Exception:
        log.exception("the run stopped on this error")  # the console shows the message, the log the traceback
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def _printer(console: Console) -> Callable[[str], None]:
    """Driver messages: one plain line each, prefixed, with no rich markup read from user text."""
    return lambda text: console.print(f"[evalfleet] {text}", markup=False, highlight=False)


def _driver(
    cfg: RunConfig,
    stage: StageConfig,
    plan_for: list[Sample],
    inputs: dict[str, list[Sample]],
    store: Store,
    console: Console,
    *,
    owner: str,
    gpus: list[int] | None,
    share: int = 1,
    streaming: dict[str, list[Sample]] | None = None,
    shared: RunProgress | None = None,
) -> _Driver | None:
    """Plan the stage, cut chunks of what is left, and make its driver; None when nothing is left to do.

    `streaming`: all samples of a judge whose answers are still coming; its queue stays open for them.
    `owner` names this driver on its leases.
    """
    note = _printer(console)
    chosen, lines = make_plan(cfg, stage.model, plan_for, gpus=gpus, share=share)
    for line in lines:
        note(f"{stage.name}: {line}")
        log.info("%s: %s", stage.name, line)

    # Chunks of what is left, cut the same way on every run.
    chunk_size = cfg.chunk_size or chosen.batch_size
    universe = streaming if streaming is not None else inputs
    finished_by_ds = {name: store.done_ids(stage.name, name) for name in {*inputs, *universe}}
    chunks: list[Chunk] = []
    for name, samples in inputs.items():
        chunks += make_chunks(samples, finished_by_ds[name], chunk_size, start_id=len(chunks))
    total = done = 0
    for name, samples in universe.items():
        finished = finished_by_ds[name]
        total += len(samples)
        done += sum(1 for s in samples if s.id in finished or s.error)
    queue = WorkQueue.of(chunks, closed=False)  # closed once the store shows every sample done
    todo = queue.remaining() if streaming is None else total - done
    note(f"stage {stage.name}: {total} samples in {len(universe)} dataset(s), {done} already done, {todo} to do"
         + (" (judged as the answers arrive)" if streaming is not None else ""))
    if not todo:
        return None

    n_chunks = len(chunks) if streaming is None else -(-todo // chunk_size)
    specs = chosen.workers[:n_chunks]  # no idle workers loading a model for nothing
    title = stage.name if len(cfg.pipeline()) > 1 else "overall"
    progress = RunProgress(total, done, console=console, every=cfg.progress_every, seconds=cfg.progress_seconds,
                           title=title, shared=shared)
    return _Driver(cfg, stage, store, queue, progress, chosen.batch_size, specs=specs, inputs=inputs, owner=owner,
                   lease_s=cfg.lease_seconds, open_inputs=streaming is not None, chunk_size=chunk_size,
                   samples={(s.dataset, s.id): s for samples in inputs.values() for s in samples})


def _execute(drivers: list[_Driver], console: Console) -> None:
    """Start every driver's workers, serve them all in one loop until each stage is done, stop them."""
    try:
        for d in drivers:
            d.launch(d.specs)
        _serve(drivers)
    except (KeyboardInterrupt, Stopped) as err:
        _printer(console)(f"{err if isinstance(err, Stopped) else 'interrupted'}; saving results and stopping the "
                          "workers")
        raise
    finally:
        for d in reversed(drivers):  # the first stage's progress owns the live view: it closes last
            d.shutdown()


def _serve(drivers: list[_Driver]) -> None:
    """One event loop over the workers of every running stage; a stage's workers stop once it is done."""
    while not all(d.stopped for d in drivers):
        handles: dict[Any, tuple[_Driver, _Worker, bool]] = {}
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


def _run(cfg: RunConfig, run_dir: Path, retry_errors: bool, redo: list[str], console: Console) -> dict:
    stages = cfg.pipeline()
    note = _printer(console)

    # 1. Read the datasets and check them against the store before writing anything: a refused run leaves the
    #    store as it was.
    store = Store(run_dir / "store.db")
    data = read_datasets(cfg)
    if problems := refusals(cfg, store, data, redo):
        store.close()
        raise UserError("\n".join(problems))

    # 2. Record the run: settings, datasets (a failed one is recorded; the others go on) and this driver.
    record = store.run_record()  # put back if this driver fails before it stores a result
    for name in redo:
        store.forget_stage(name)
    for stage in stages:
        store.set_fingerprint(stage.name, stage.fingerprint(cfg.seed))
    store.set_meta("name", cfg.name)
    store.set_meta("config", cfg.model_dump(mode="json"))
    if retry_errors:
        for stage in stages:
            store.clear_errors(stage.name)
    for name, why in data.failed.items():
        store.set_dataset(name, "failed", error=why)
        note(f"dataset {name} failed: {why}")
        log.error("dataset %s failed: %s", name, why)
    loaded = data.samples
    for name, samples in loaded.items():
        store.put_samples(samples, data.positions[name])
        store.set_dataset(name, "running", len(samples))
        for s in samples:
            if s.error:
                log.warning("sample %s/%s: %s", name, s.id, s.error)
    cache = JudgeCache(path) if (path := cfg.judge_cache_path) is not None else None
    if fs := network_filesystem(run_dir):
        note(f"{run_dir} is on a network filesystem ({fs}): SQLite can share it only between processes of one "
             "host. To run on several nodes, use shards (--shard i/N or `evalfleet slurm`) and `evalfleet merge`.")
    started = time.time()
    state = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    owner = f"{state['host']}:{state['pid']}:{secrets.token_hex(4)}"  # this driver, on its leases
    store.set_meta("state", {**state, "state": "running"})
    store.driver_state(owner, "running")

    # 3. The stages over all GPUs: one after the other, or all at once on disjoint GPU sets. Every judge
    #    rates the first stage's answers, read from the store.
    try:
        gpus = stage_gpus(cfg)
        if cfg.concurrent_stages and len(stages) > 1:
            _run_concurrently(cfg, stages, gpus, loaded, store, cache, console, owner)
        else:
            for stage, stage_gpu in zip(stages, gpus):
                inputs = loaded
                if stage.kind == "judge":
                    inputs, _ = judge_inputs(stage, stages[0], loaded, store, cache)
                driver = _driver(cfg, stage, [s for samples in inputs.values() for s in samples], inputs, store,
                                 console, owner=owner, gpus=stage_gpu)
                if driver is not None:
                    _execute([driver], console)
                if stage.kind == "judge" and cache is not None:
                    fill_cache(stage, inputs, store, cache)
        store.check_same_file()  # reports only from the store this driver opened
    except BaseException as err:
        why = (err.state if isinstance(err, Stopped) else "interrupted" if isinstance(err, KeyboardInterrupt)
               else f"failed: {type(err).__name__}: {err}")
        if not redo and _quietly(store.forget_driver_if_idle, owner):  # it stored nothing: the run stays as it was
            _quietly(store.restore_run_record, record)
            raise
        _quietly(store.driver_state, owner, why)
        _quietly(store.set_meta, "state", {**state, "state": why, "ended": time.time(),
                                           **({"signal": err.name} if isinstance(err, Stopped) else {})})
        raise
    store.driver_state(owner, "done")
    store.set_meta("state", {**state, "state": "done", "ended": time.time(), "wall_s": round(time.time() - started, 2)})
    for name in loaded:
        store.set_dataset(name, "done", len(loaded[name]))

    # 4. Report.
    summary = write_report(run_dir, store, cfg, console)
    store.close()
    if cache is not None:
        cache.close()
    note(f"results in {run_dir}")
    return summary


def _run_concurrently(
    cfg: RunConfig,
    stages: list[StageConfig],
    gpus: list[list[int] | None],
    loaded: dict[str, list[Sample]],
    store: Store,
    cache: JudgeCache | None,
    console: Console,
    owner: str,
) -> None:
    """All stages at once: each judge is fed the first stage's answers as they are stored."""
    first = _driver(cfg, stages[0], [s for samples in loaded.values() for s in samples], loaded, store, console,
                    owner=owner, gpus=gpus[0], share=len(stages))
    drivers = [first] if first is not None else []
    feeds: list[JudgeFeed] = []
    answerable = {name: [s for s in samples if s.error is None] for name, samples in loaded.items()}
    for stage, stage_gpu in zip(stages[1:], gpus[1:]):
        inputs, _ = judge_inputs(stage, stages[0], loaded, store, cache)
        d = _driver(cfg, stage, judge_plan_samples(stage, stages[0], loaded), inputs, store, console, owner=owner,
                    gpus=stage_gpu,
                    share=len(stages), streaming=answerable if first is not None else None,
                    shared=drivers[0].progress if drivers else None)
        if d is None:
            continue
        drivers.append(d)
        if first is not None:
            feeds.append(JudgeFeed(stage, stages[0], loaded, store, cache, d, d.chunk_size, inputs))
        if cache is not None:
            d.on_finish = partial(fill_cache, stage, feeds[-1].inputs if first is not None else inputs, store, cache)
    if first is not None:
        first.on_commit = partial(offer_all, feeds)
        first.on_finish = partial(close_all, feeds)
    if drivers:
        _execute(drivers, console)
