"""A stand-in worker: a real spawned process that speaks the driver-worker protocol (`engine.messages`) with no
model, so the driver's handling of deaths, leases and refills is tested in seconds. Its answer to a sample is
the sample's question upper-cased. Launched through the driver's own `Launcher` protocol."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from multiprocessing.connection import Connection
from typing import Any

from evalfleet.engine.messages import PROTOCOL, GivenBack, Ready, Results, Stop, TakeBack, Unloaded, Work
from evalfleet.records import Result, WorkerSpec


def standin_main(conn: Connection, behaviour: dict[str, Any], started: int) -> None:
    """`behaviour`: die_on (a sample id whose chunk kills the worker), die_before_ready (every start fails),
    protocol (the version it claims)."""
    if behaviour.get("die_before_ready"):
        os._exit(4)
    conn.send(Ready(f"stand-in #{started}", 0.0, sys.executable, behaviour.get("protocol", PROTOCOL)))
    while True:
        msg = conn.recv()
        if isinstance(msg, Stop):
            conn.send(Unloaded(0.0))
            return
        if isinstance(msg, TakeBack):  # it answers each chunk as it comes: nothing is left unstarted
            conn.send(GivenBack(msg.chunk_id, []))
            continue
        assert isinstance(msg, Work)
        if behaviour.get("die_on") in {s.id for s in msg.samples}:
            os._exit(3)
        conn.send(Results(msg.chunk_id, [Result(s.dataset, s.id, s.question.upper(), seconds=0.001, n_tokens=1)
                                         for s in msg.samples]))


class StandInLauncher:
    """`engine.launcher.Launcher` that starts stand-in workers; counts the starts."""

    def __init__(self, **behaviour: Any) -> None:
        self.ctx = mp.get_context("spawn")
        self.behaviour = behaviour
        self.started = 0

    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str) -> tuple[Any, Connection]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=standin_main, args=(child, self.behaviour, self.started), daemon=True)
        proc.start()
        child.close()
        self.started += 1
        return proc, parent
