"""Starting a worker: a spawned local process, a process under another Python environment (a stage's `python:`),
or a Ray actor (`evalfleet.cluster.ray`). Either way the driver gets a process handle and a connection that speaks
`evalfleet.engine.messages`."""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener
from typing import Any, Protocol

from evalfleet.backends.kinds import kind
from evalfleet.config import ModelConfig
from evalfleet.engine.messages import Session, Stop
from evalfleet.engine.worker import worker_main
from evalfleet.errors import UserError
from evalfleet.records import WorkerSpec


class WorkerProcess(Protocol):
    """What the driver uses of a worker's process (`multiprocessing.Process`, or `cluster.ray.RayProcess`)."""

    pid: int | None
    exitcode: int | None
    sentinel: Any
    """An OS handle that becomes ready when the process ends; None for a Ray actor (its connection's end says)."""

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str
              ) -> tuple[WorkerProcess, Connection]: ...


Kept = tuple[WorkerSpec, WorkerProcess, Connection]
"""A loaded worker that one stage hands to a later one with the same weights (`Stop(keep=True)`)."""


class HandOver:
    """Gives a stage the workers an earlier stage kept loaded: each gets the stage's `Session` on its pipe and
    answers `Ready` at once (`engine/sessions.py`); a replica none was kept for is started by `fallback`."""

    def __init__(self, kept: list[Kept], fallback: Launcher) -> None:
        self.kept, self.fallback = kept, fallback

    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str
              ) -> tuple[WorkerProcess, Connection]:
        for i, (held, proc, conn) in enumerate(self.kept):
            if held.name == spec.name:
                del self.kept[i]
                vars(proc).pop("spawned_at", None)  # its process start for this stage is the hand-over, not its spawn
                try:
                    conn.send(Session(model_json, batch_size, output_dir))
                    return proc, conn
                except OSError:  # it died meanwhile
                    break
        return self.fallback.start(spec, model_json, batch_size, output_dir)


def release(kept: list[Kept]) -> None:
    """Kept workers no stage took: unload and exit."""
    for _, proc, conn in kept:
        try:
            conn.send(Stop())
        except OSError:
            pass
    for _, proc, _ in kept:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    kept.clear()


HEAVY = ("evalfleet.engine.preload",)
"""What loading a transformers or diffusers model imports first (torch, transformers: 5-14 s)."""


def worker_context(heavy: bool) -> Any:
    """Worker processes are forked from multiprocessing's fork server, which imports evalfleet's worker and, if
    `heavy`, torch and transformers once, when it starts: a judge stage's workers, a replaced worker, a second
    CPU worker or the next run in the same Python process start in a fraction of a second instead of importing
    them again. The server holds no thread, CUDA context or open store, so forking it is safe; a forked process
    starts as a spawned one does, with the environment given by `in_environment`. (The preload is set by the
    first caller: a server started for an API backend's workers preloads no torch.)"""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["evalfleet.engine.worker", *(HEAVY if heavy else ())])
    return ctx


def in_environment(env: dict[str, str], target: Callable[..., None], *args: Any) -> None:
    """`target(*args)` in the environment the driver had when it started this process (a process forked from the
    fork server inherits the server's, which may be older: a test's or a notebook's later settings)."""
    os.environ.clear()
    os.environ.update(env)
    target(*args)


class LocalLauncher:
    """Workers as processes of this driver (`worker_context`), each with a private pipe."""

    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str
              ) -> tuple[WorkerProcess, Connection]:
        ctx = worker_context(heavy=kind(ModelConfig.model_validate_json(model_json).backend).imports_torch)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=in_environment, name=f"evalfleet-{spec.name}", daemon=True,
                           args=(dict(os.environ), worker_main, child, spec, model_json, batch_size, output_dir))
        proc.start()
        child.close()
        return proc, parent


START_TIMEOUT_S = 120.0
"""Seconds a worker under another Python gets to start its interpreter and dial back."""


class EnvProcess:
    """A worker process under another interpreter, with what the driver uses of a `multiprocessing.Process`;
    its pidfd is the sentinel that becomes ready when it ends."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid: int | None = popen.pid
        self.sentinel = os.pidfd_open(popen.pid)

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.popen.kill()


class EnvLauncher:
    """Workers under another Python environment (`python: /envs/x/bin/python`, where evalfleet is installed too):
    a plain subprocess running `evalfleet.engine.entry`, which dials back over a private Unix socket. Unlike a
    spawned process, it imports that environment's packages, not this one's."""

    def __init__(self, python: str) -> None:
        self.python = python
        self.key = secrets.token_bytes(16)

    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str
              ) -> tuple[WorkerProcess, Connection]:
        with Listener(family="AF_UNIX", authkey=self.key) as listener:  # a socket in multiprocessing's temp folder
            address = listener.address
            listener._listener._socket.settimeout(1.0)  # type: ignore[attr-defined]  # to watch the child meanwhile
            popen = subprocess.Popen([self.python, "-m", "evalfleet.engine.entry", address, self.key.hex()])
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    conn = listener.accept()
                    break
                except TimeoutError:
                    if popen.poll() is None and time.monotonic() < deadline:
                        continue
                    popen.kill()
                    why = (f"it exited with code {popen.wait()}" if time.monotonic() < deadline
                           else f"it did not dial back within {START_TIMEOUT_S:.0f} s")
                    raise UserError(f"stage python {self.python}: the worker could not start ({why}); is evalfleet "
                                    "installed in that environment? (its error is printed above)") from None
        conn.send((spec, model_json, batch_size, output_dir))
        return EnvProcess(popen), conn


def launcher(backend: str, python: str | None = None) -> Launcher:
    """The launcher for `cluster.backend` (`local` or `ray`), and a stage's `python` if it names one."""
    if backend == "ray":
        from evalfleet.cluster.ray import RayLauncher

        return RayLauncher()
    if python is not None:
        if not os.access(python, os.X_OK):
            raise UserError(f"python: {python} is not an executable Python interpreter")
        return EnvLauncher(python)
    return LocalLauncher()
