"""A loaded replica answering one session after another: the later stages of a run that use the same weights
(`Stop(keep=True)`, then a `Session` on the same pipe), or runs attaching to a served replica
(`engine/served.py`). A session may change the generation settings, system prompt and batch size; its weights,
dtype and engine are the replica's (`ModelConfig.load_key`)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from evalfleet.config import ModelConfig
from evalfleet.engine.messages import Fatal, Ready, Session, Step, Unloaded
from evalfleet.engine.streaming import run_stream
from evalfleet.engine.worker_loop import WorkerLoop

if TYPE_CHECKING:
    from evalfleet.backends import Backend, Stream


@dataclass
class Held:
    """What a replica holds between sessions."""

    backend: Backend
    stream: Stream
    model_json: str
    batch_size: int


def serve_sessions(conn: Connection, held: Held) -> None:
    """Sessions on `conn` until one ends without `keep`, a plain `Stop` comes instead, or the driver is gone."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(msg, Session) or not session(conn, msg, held):
            return


def session(conn: Connection, hello: Session, held: Held, served: bool = False) -> bool:
    """One session on `held`, updated for the next; whether the driver said to stay loaded after it."""
    started = time.time()
    loop = WorkerLoop(conn, hello.batch_size)
    cfg = ModelConfig.model_validate_json(hello.model_json)
    if not cfg.served_by(ModelConfig.model_validate_json(held.model_json)):
        loop.send(Fatal("this replica holds other weights or engine settings than the stage's"))
        loop.close()
        return False
    backend = held.backend
    if (hello.model_json, hello.batch_size) != (held.model_json, held.batch_size):
        backend.reconfigure(cfg)
        held.model_json, held.batch_size = hello.model_json, hello.batch_size
        held.stream = _again(held)
    if hasattr(backend, "run_dir"):  # files it writes (edited images) go to this run's folder
        backend.run_dir = Path(hello.output_dir)
    backend.on_step = lambda step, steps: loop.send(Step(step, steps))
    first = loop.start(backend)
    label = f"{backend.label} (served, pid {os.getpid()})" if served else backend.label
    loop.send(Ready(label, 0.0, sys.executable, started=started, phases={"attach": round(time.time() - started, 3)}))
    clean = False
    try:
        run_stream(loop, held.stream, first)
        clean = True
    except EOFError:
        pass  # the driver is gone
    finally:
        loop.close()
    if not clean:
        held.stream = _again(held)  # rows of the lost run may be left in the engine
        return False
    try:
        loop.send(Unloaded(0.0))
    except OSError:
        return False
    return loop.keep


def _again(held: Held) -> Stream:
    """The backend's stream made anew (its old cache freed first)."""
    from evalfleet.backends import stream_of

    del held.stream
    return stream_of(held.backend, held.batch_size, None)
