"""`evalfleet serve CONFIG`: keep a stage's model loaded between runs (warm replicas, `engine/served.py`).

Plan the stage as `evalfleet run` would (the same datasets, GPUs and batch size), start its replicas, wait until
each has loaded and registered, then wait: runs started with `--serve` attach to them. Ctrl-C, SIGTERM or
`evalfleet serve --stop` stops the replicas (they unregister and exit, freeing their GPUs); so does a replica
left idle for the idle time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable

from evalfleet.backends.kinds import kind
from evalfleet.config import ModelConfig, RunConfig
from evalfleet.engine.served import registered, serve_dir, serve_replica
from evalfleet.errors import RunError, UserError
from evalfleet.plan.stage import make_plan, stage_gpus
from evalfleet.preflight import checked_datasets
from evalfleet.stopping import Stopped, stop_on_signals

STOP_WAIT_S = 30.0


def serve(cfg: RunConfig, idle_s: float, note: Callable[[str], None], stage_name: str | None = None) -> None:
    stages = cfg.pipeline()
    index = next((i for i, s in enumerate(stages) if s.name == stage_name), None) if stage_name else 0
    if index is None:
        raise UserError(f"--stage {stage_name}: no such stage (stages: {', '.join(s.name for s in stages)})")
    stage = stages[index]
    if kind(stage.model.backend).remote:
        raise UserError(f"stage {stage.name}: an openai backend's model is served by its endpoints; nothing to load")
    data = checked_datasets(cfg)  # for the plan's batch size and memory estimate, as `evalfleet run` chooses them
    folder = serve_dir(cfg.cluster.serve_dir)
    if same := [r for _, r in registered(folder) if stage.model.served_by(ModelConfig.model_validate_json(r.model))]:
        raise UserError(f"this model is served already in {folder} (pids {', '.join(str(r.pid) for r in same)}); "
                        "`evalfleet serve --stop` stops it")
    chosen, lines = make_plan(cfg, stage.model, [s for v in data.samples.values() for s in v],
                              gpus=stage_gpus(cfg)[index])
    for line in lines:
        note(f"{stage.name}: {line}")
    model_json = stage.model.model_copy(update={"engine": chosen.engine}).model_dump_json()  # the plan's engine
    ctx = mp.get_context("spawn")
    t0 = time.monotonic()
    procs = [ctx.Process(target=serve_replica, args=(spec, model_json, chosen.batch_size, str(folder), idle_s),
                         name=f"evalfleet-serve-{spec.name}", daemon=True) for spec in chosen.workers]
    with stop_on_signals():  # SIGINT, SIGTERM, SIGUSR1: stop the replicas
        try:
            for p in procs:
                p.start()
            pids = {p.pid for p in procs}
            while len(ready := [r for _, r in registered(folder) if r.pid in pids]) < len(procs):
                if dead := [p for p in procs if not p.is_alive()]:
                    raise RunError(f"a replica exited with code {dead[0].exitcode} while loading; its error is above")
                time.sleep(0.2)
            note(f"serving {len(ready)} replica(s) of {stage.model.path} ({', '.join(r.name for r in ready)}), loaded "
                 f"in {time.monotonic() - t0:.1f} s; `evalfleet run CONFIG --serve` uses them. They stop after "
                 f"{idle_s / 60:g} idle minutes, on Ctrl-C or on `evalfleet serve --stop`")
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(0.5)
            note("every replica has stopped (idle, or stopped)")
        except (KeyboardInterrupt, Stopped):
            note("stopping the replicas")
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(STOP_WAIT_S)
                if p.is_alive():
                    p.kill()


def stop_serving(folder_setting: str | None, note: Callable[[str], None]) -> None:
    """Stop every replica registered in the serve folder (SIGTERM: they unregister and exit)."""
    folder = serve_dir(folder_setting)
    found = registered(folder)
    for _, replica in found:
        os.kill(replica.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while registered(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = registered(folder)
    note(f"stopped {len(found) - len(left)} served replica(s) in {folder}" + (f"; {len(left)} still running" if left else ""))
