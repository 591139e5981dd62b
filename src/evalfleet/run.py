"""`evalfleet run`, top to bottom: check the request, open the store and read the datasets, record the run, run
each stage (plan its placement, cut what is left into chunks, serve its workers until it is done), then report.

The parts: `preflight` (checks before any write), `data` (samples), `plan` (placement), `engine` (drivers,
workers, the event loop), `stages` (a judge's inputs), `store`, `reporting`.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rich.console import Console

from evalfleet.backends.kinds import kind
from evalfleet.config import ModelConfig, RunConfig, StageConfig
from evalfleet.engine.driver import StageDriver
from evalfleet.engine.launcher import HandOver, Kept, Launcher, launcher, release
from evalfleet.engine.loop import execute
from evalfleet.engine.prewarm import prewarm
from evalfleet.engine.queue import Chunk, WorkQueue, make_chunks
from evalfleet.engine.served import ServedLauncher, free_replicas, serve_dir
from evalfleet.errors import UserError
from evalfleet.observe.progress import RunProgress
from evalfleet.observe.runlog import log_to
from evalfleet.observe.startup import process_age
from evalfleet.plan.placement import chunk_size_for
from evalfleet.plan.stage import check_gpus, make_plan, stage_gpus
from evalfleet.preflight import Datasets, check_output_dir, checked_datasets, refusals, refuse_fresh_while_live
from evalfleet.records import Sample, WorkerSpec
from evalfleet.reporting.provenance import run_provenance
from evalfleet.reporting.report import write_report
from evalfleet.scoring import scoring_key
from evalfleet.stages.judge import JudgeFeed, close_all, fill_cache, judge_inputs, judge_plan_samples, offer_all
from evalfleet.stopping import Stopped, stop_on_signals
from evalfleet.store import JudgeCache, Store, network_filesystem, quietly, store_errors
from evalfleet.store.background import SampleWriter, ToStore
from evalfleet.store.made import Made
from evalfleet.store.snapshot import Snapshot

log = logging.getLogger("evalfleet")


def run(
    cfg: RunConfig,
    *,
    fresh: bool = False,
    retry_errors: bool = False,
    redo: list[str] | None = None,
    console: Console | None = None,
    log_file: Path | None = None,
) -> dict:
    """Run (or resume) the evaluation described by `cfg`; returns the summary. `redo` names stages whose stored
    results are dropped first (e.g. a judge whose settings changed); identical judge requests are still answered
    from the judge cache. The full log (with tracebacks) goes to `log_file`, by default `RUN_DIR/run.log`."""
    console = console or Console()
    names = [stage.name for stage in cfg.pipeline()]
    if unknown := sorted(set(redo or []) - set(names)):
        raise UserError(f"--redo {', '.join(unknown)}: no such stage (stages: {', '.join(names)})")
    run_dir = cfg.run_dir
    check_output_dir(run_dir)
    startup = {"driver start": round(process_age(), 3)}  # interpreter, imports, config: before this line
    check_gpus(cfg)  # GPUs that are not there: refused before anything is written
    with stop_on_signals():
        prewarmed = prewarm(cfg)  # the first stage's workers import while the datasets are read and checked
        try:
            t0 = time.perf_counter()
            data = checked_datasets(cfg)  # every input problem at once, before anything is deleted or written
            startup["datasets"] = round(time.perf_counter() - t0, 3)
            if fresh and run_dir.exists():
                refuse_fresh_while_live(run_dir, cfg.lease_seconds)
                shutil.rmtree(run_dir)
            made = Made.before(run_dir, cfg.judge_cache_path)
            snapshot = Snapshot.before(run_dir) if not made.folders and not redo else None
            log_path = log_file or run_dir / "run.log"
            handler = log_to(log_path)
            stored, idle = False, False
            try:
                with store_errors(run_dir / "store.db"):
                    summary = _run(cfg, run_dir, data, startup, retry_errors, redo or [], console, prewarmed)
                stored = True
                return summary
            except Exception as err:
                idle = getattr(err, "stored_nothing", False)
                log.exception("the run stopped on this error")  # the console shows the message, the log the traceback
                raise
            finally:
                log.removeHandler(handler)
                handler.close()
                if not stored and (kept := made.discard_if_unused(log_path)) is not None:
                    printer(console)(f"nothing was stored: {run_dir}, made by this run, is removed again"
                                     + (f"; its log is {kept}" if kept != log_path else ""))
                elif idle and snapshot is not None and (kept := snapshot.restore(log_path)) is not None:
                    printer(console)(f"nothing was stored: {run_dir} is as it was before this run; this run's log "
                                     f"is {kept}")
                if snapshot is not None:
                    snapshot.drop()
        finally:
            if prewarmed is not None:
                prewarmed.close()  # the processes the plan did not need


def _run(cfg: RunConfig, run_dir: Path, data: Datasets, startup: dict[str, float], retry_errors: bool,
         redo: list[str], console: Console, prewarmed: Launcher | None) -> dict:
    stages = cfg.pipeline()
    note = printer(console)

    # 1. Check the datasets read against the store before writing anything: a refused run leaves the store as it
    #    was. (The first stage's worker processes, `prewarmed`, import meanwhile.)
    t0 = time.perf_counter()
    store = Store(run_dir / "store.db")
    if problems := refusals(cfg, store, data, redo):
        store.close()
        raise UserError("\n".join(problems))

    # 2. Record the run: settings, datasets (a failed one is recorded; the others go on) and this driver.
    record = store.run_record()  # put back if this driver fails before it stores a result
    for name in redo:
        store.forget_stage(name)
    for stage in stages:
        store.set_fingerprint(stage.name, stage.fingerprint(cfg.seed))
        if store.get_meta(f"scoring:{stage.name}") is None:  # else reports rescore if the settings changed
            store.set_meta(f"scoring:{stage.name}", scoring_key(stage, cfg))
    store.set_meta("name", cfg.name)
    store.set_meta("config", cfg.model_dump(mode="json"))
    store.set_meta("provenance", run_provenance(cfg))  # versions, git commit, model hashes
    if retry_errors:
        for stage in stages:
            store.clear_errors(stage.name)
    for name, why in data.failed.items():
        store.set_dataset(name, "failed", error=why)
        note(f"dataset {name} failed: {why}")
        log.error("dataset %s failed: %s", name, why)
    loaded = data.samples
    stored = SampleWriter(store.path, samples_to_store(store, data))  # in a thread, while the stages start
    startup["datasets"] = round(startup["datasets"] + time.perf_counter() - t0, 3)  # reading and checking
    store.set_meta("startup", startup)
    for name, samples in loaded.items():
        store.set_dataset(name, "running", len(samples))
        for s in samples:
            if s.error:
                log.warning("sample %s/%s: %s", name, s.id, s.error)
    judges = any(stage.kind == "judge" for stage in stages)
    cache = JudgeCache(path) if (path := cfg.judge_cache_path) is not None and judges else None
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
        todo = Stages(cfg, stage_gpus(cfg), loaded, store, cache, console, owner, prewarmed, stored)
        if cfg.concurrent_stages and len(stages) > 1:
            _run_concurrently(todo)
        else:
            _run_in_turn(todo)
        stored.wait()
        store.check_same_file()  # reports only from the store this driver opened
    except BaseException as err:
        stored.stop()
        why = (err.state if isinstance(err, Stopped) else "interrupted" if isinstance(err, KeyboardInterrupt)
               else f"failed: {type(err).__name__}: {err}")
        if not redo and quietly(store.forget_driver_if_idle, owner):  # it stored nothing: the run stays as it was
            quietly(store.restore_run_record, record)
            quietly(store.close)
            if cache is not None:
                cache.close()
            if isinstance(err, Exception):  # `run` puts the folder back byte for byte (`store/snapshot.py`)
                err.stored_nothing = True  # type: ignore[attr-defined]
            raise
        quietly(store.driver_state, owner, why)
        quietly(store.set_meta, "state", {**state, "state": why, "ended": time.time(),
                                           **({"signal": err.name} if isinstance(err, Stopped) else {})})
        raise
    store.driver_state(owner, "done")
    store.set_meta("state", {**state, "state": "done", "ended": time.time(), "wall_s": round(time.time() - started, 2)})
    for name in loaded:
        store.set_dataset(name, "done", len(loaded[name]))

    # 4. Report, from the store alone. The samples read are given back first: a million of them hold ~1 GB, which
    #    the report's rows would come on top of (`bench/million.py`).
    for samples in loaded.values():
        samples.clear()
    summary = write_report(run_dir, store, cfg, console)
    store.close()
    if cache is not None:
        cache.close()
    note(f"results in {run_dir}")
    return summary


@dataclass
class Stages:
    """What running the stages needs: the settings, each stage's GPUs, the samples read (and their storing), the
    store and judge cache, the console, this driver's name on its leases, and the first stage's worker processes if
    started."""

    cfg: RunConfig
    gpus: list[list[int] | None]
    loaded: dict[str, list[Sample]]
    store: Store
    cache: JudgeCache | None
    console: Console
    owner: str
    prewarmed: Launcher | None
    stored: SampleWriter
    """The samples being stored: what reads them from the store (a judge's inputs) waits for it."""


def _run_in_turn(r: Stages) -> None:
    """The stages one after the other; every judge rates the first stage's answers, read from the store. A stage
    whose weights the next one loads too hands it its workers still loaded (one load per model per run)."""
    stages, gpus, loaded, store, cache = r.cfg.pipeline(), r.gpus, r.loaded, r.store, r.cache
    kept: list[Kept] = []
    kept_for: StageConfig | None = None
    try:
        for i, (stage, stage_gpu) in enumerate(zip(stages, gpus)):
            if kept_for is not stage:
                release(kept)  # kept for no stage now: their GPUs are freed first
            inputs = loaded
            if stage.kind == "judge":
                r.stored.wait()
                inputs, _ = judge_inputs(stage, stages[0], loaded, store, cache)
            launch = r.prewarmed if i == 0 else HandOver(kept, launcher(r.cfg.cluster.backend)) if kept else None
            driver = stage_driver(r.cfg, stage, [s for samples in inputs.values() for s in samples], inputs, store,
                                  r.console, owner=r.owner, gpus=stage_gpu, launch=launch, reuse=[k[0] for k in kept])
            following = i + 1 < len(stages) and _same_replicas(r.cfg, stage, stage_gpu, stages[i + 1], gpus[i + 1])
            kept_for = stages[i + 1] if following else None  # a stage with nothing to do passes them on
            if driver is not None:
                driver.keep = kept if following else None
                execute([driver], printer(r.console))
            if stage.kind == "judge" and cache is not None:
                fill_cache(stage, inputs, store, cache)
    finally:
        release(kept)


def _same_replicas(cfg: RunConfig, a: StageConfig, a_gpus: list[int] | None, b: StageConfig,
                   b_gpus: list[int] | None) -> bool:
    """Whether stage b can use stage a's loaded workers: the same weights and engine on the same GPUs, in worker
    processes of this driver."""
    return (cfg.cluster.backend == "local" and not kind(a.model.backend).remote
            and not (a.python or b.python or cfg.python)
            and a.model.load_key() == b.model.load_key() and a_gpus == b_gpus)


def _run_concurrently(r: Stages) -> None:
    """All stages at once: each judge is fed the first stage's answers as they are stored."""
    cfg, stages, gpus, loaded, store, cache, console, owner = (r.cfg, r.cfg.pipeline(), r.gpus, r.loaded, r.store,
                                                                r.cache, r.console, r.owner)
    first = stage_driver(cfg, stages[0], [s for samples in loaded.values() for s in samples], loaded, store, console,
                         owner=owner, gpus=gpus[0], share=len(stages), launch=r.prewarmed)
    drivers = [first] if first is not None else []
    feeds: list[JudgeFeed] = []
    r.stored.wait()  # the judges' inputs read the samples from the store
    answerable = {name: [s for s in samples if s.error is None] for name, samples in loaded.items()}
    for stage, stage_gpu in zip(stages[1:], gpus[1:]):
        inputs, _ = judge_inputs(stage, stages[0], loaded, store, cache)
        d = stage_driver(cfg, stage, judge_plan_samples(stage, stages[0], loaded), inputs, store, console, owner=owner,
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
        execute(drivers, printer(console))


def stage_driver(
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
    launch: Launcher | None = None,
    reuse: list[WorkerSpec] | None = None,
) -> StageDriver | None:
    """Plan the stage, cut chunks of what is left, and make its driver; None when nothing is left to do.

    `streaming`: all samples of a judge whose answers are still coming; its queue stays open for them.
    `owner` names this driver on its leases. `launch`: processes started already (`engine/prewarm.py`), else
    the cluster backend's launcher. `reuse`: the replicas an earlier stage kept loaded for this one.
    """
    note = printer(console)
    t0 = time.perf_counter()
    folder = serve_dir(cfg.cluster.serve_dir)
    served = free_replicas(folder, stage.model) if cfg.cluster.backend == "serve" else []
    if served:  # warm replicas: no plan, no loading
        batch_size, workers = served[0][1].batch_size, [r.spec for _, r in served]
        engine = ModelConfig.model_validate_json(served[0][1].model).engine
        lines = [f"plan: {len(served)} served replica(s) from {folder}, batch size {batch_size}, engine {engine}"]
    else:
        chosen, lines = make_plan(cfg, stage.model, plan_for, gpus=gpus, share=share)
        batch_size, workers, engine = chosen.batch_size, reuse or chosen.workers, chosen.engine
        if reuse:
            lines.append(f"plan: the previous stage's {len(reuse)} replica(s) stay loaded for this one")
        if cfg.cluster.backend == "serve":
            lines.append(f"plan: no free replica of this stage's model (weights, dtype, engine) is served in {folder}; "
                         "starting its own workers")
    stage = stage.model_copy(update={"model": stage.model.model_copy(update={"engine": engine})})  # the plan's
    plan_s = round(time.perf_counter() - t0, 3)
    for line in lines:
        note(f"{stage.name}: {line}")
        log.info("%s: %s", stage.name, line)

    # Chunks of what is left, cut the same way on every run.
    planned = stage.model.batch_size == "auto" and not kind(stage.model.backend).remote  # (else: by its endpoints)
    chunk_size = chunk_size_for(batch_size, planned, cfg.chunk_size)
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
    specs = workers[:n_chunks]  # no idle workers loading a model for nothing
    title = stage.name if len(cfg.pipeline()) > 1 else "overall"
    progress = RunProgress(total, done, console=console, every=cfg.progress_every, seconds=cfg.progress_seconds,
                           title=title, shared=shared)
    launch = launch or launcher(cfg.cluster.backend, stage.python or cfg.python)
    if served:
        launch = ServedLauncher({r.name: (path, r) for path, r in served}, fallback=launch)
    driver = StageDriver(cfg, stage, store, queue, progress, launch, batch_size, chunk_size, specs, inputs, owner,
                         open_inputs=streaming is not None)
    driver.perf.data["startup"]["plan"] = plan_s
    return driver


def samples_to_store(store: Store, data: Datasets) -> list[ToStore]:
    """Each dataset's samples, unless the store holds them as read now (same files and settings: a resume of a
    million samples skips rewriting them, `bench/million.py`)."""
    return [ToStore(name, samples, data.positions[name], data.keys[name]) for name, samples in data.samples.items()
            if store.get_meta(f"samples:{name}") != data.keys[name]]


def printer(console: Console) -> Callable[[str], None]:
    """Driver messages: one plain line each, prefixed, with no rich markup read from user text, not wrapped by rich
    (a path in them stays whole, to be copied; a terminal wraps it for the eye)."""
    return lambda text: console.print(f"[evalfleet] {text}", markup=False, highlight=False, soft_wrap=True)
