"""Warm replicas (issue 20): `evalfleet serve CONFIG` loads a stage's model into replicas that answer one run after
another, and `evalfleet run CONFIG --serve` (`cluster.backend: serve`) uses them instead of starting its own.

A served replica is a worker process that has loaded its model, compiled its kernels and set up its engine once.
It registers in the serve folder (one JSON file per replica: its socket, key, pid, GPUs and model settings) and
waits for a run on a private Unix socket. A run's driver attaches to each free replica that holds its stage's
weights and engine (its generation settings may differ): it holds an exclusive lock on the replica's file while
attached, dials the socket, opens a `Session` and then speaks the same messages as with a worker it spawned
(`engine/sessions.py`). The replica answers `Ready` at once, then the chunks; after `Stop` it goes back to waiting
for the next run instead of unloading. The store, resume and leases are the run's as ever. A replica waiting
longer than its idle time, or whose `evalfleet serve` is stopped, unloads and exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import select
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import TYPE_CHECKING

from evalfleet.assets import default_cache_dir
from evalfleet.config import ModelConfig
from evalfleet.engine.messages import Session
from evalfleet.engine.sessions import Held, session
from evalfleet.errors import RunError
from evalfleet.records import WorkerSpec
from evalfleet.store.hosts import pid_alive as _alive  # a zombie replica counts as gone

if TYPE_CHECKING:
    from evalfleet.engine.launcher import Launcher, WorkerProcess


def serve_dir(configured: str | None = None) -> Path:
    """Where this host's served replicas register: `cluster.serve_dir`, else the cache folder's `serve/HOST`."""
    return Path(configured) if configured else default_cache_dir() / "serve" / socket.gethostname()


@dataclass(frozen=True)
class Replica:
    """A served replica's registration."""

    name: str
    gpus: tuple[str, ...]
    pid: int
    address: str
    key: str
    """Hex of the socket's authentication key (the file is readable by its owner only)."""
    model: str
    """The model settings it loaded (`ModelConfig` as JSON)."""
    batch_size: int
    threads: int
    loaded_in: float = 0.0
    """Seconds from its entry point to registering (imports, CUDA init, weights, kernels, engine)."""

    @property
    def spec(self) -> WorkerSpec:
        return WorkerSpec(self.name, tuple(self.gpus), self.threads)


def register(folder: Path, replica: Replica) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{replica.name}-{replica.pid}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(replica), f)
    tmp.replace(path)
    return path


def registered(folder: Path) -> list[tuple[Path, Replica]]:
    """The replicas registered in `folder` whose process lives (files of dead ones are removed)."""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            raw = json.loads(path.read_text())
            replica = Replica(**{**raw, "gpus": tuple(raw["gpus"])})
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if _alive(replica.pid):
            found.append((path, replica))
        else:
            path.unlink(missing_ok=True)
    return found


class Attached:
    """A driver's hold on a served replica: the replica's file locked, its socket dialled. It has what the driver
    uses of a worker's process; the "process" is the replica's session with this run, which ends when the replica
    closes the connection after `Unloaded` (the replica itself lives on)."""

    def __init__(self, replica: Replica, lock: int, conn: Connection) -> None:
        self.replica, self.lock, self.conn = replica, lock, conn
        self.pid: int | None = replica.pid
        self.sentinel = os.pidfd_open(replica.pid)
        self.ended = False

    @property
    def exitcode(self) -> int | None:
        return None if self.is_alive() else -signal.SIGKILL if not _alive(self.replica.pid) else 0

    def join(self, timeout: float | None = None) -> None:
        """Wait (up to `timeout`) for the replica to end the session: messages left are dropped, then EOF."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ended:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if select.select([self.sentinel], [], [], 0)[0]:
                break  # the replica's process ended
            try:
                if not self.conn.poll(left if left is None else min(left, 0.5)):
                    if left is not None and left <= 0:
                        return
                    continue
                self.conn.recv()
            except (EOFError, OSError):
                break
        self._release()

    def is_alive(self) -> bool:
        return not self.ended and _alive(self.replica.pid)

    def kill(self) -> None:
        """The driver found the replica hung: it is killed (its `evalfleet serve` goes on with the others)."""
        try:
            os.kill(self.replica.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._release()

    def _release(self) -> None:
        if not self.ended:
            self.ended = True
            self.conn.close()
            os.close(self.lock)


def attach(path: Path, replica: Replica, model_json: str, batch_size: int, output_dir: str) -> Attached | None:
    """Lock and dial the replica; None if another driver holds it or it cannot be reached."""
    lock = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        conn = Client(replica.address, family="AF_UNIX", authkey=bytes.fromhex(replica.key))
        conn.send(Session(model_json, batch_size, output_dir))
    except OSError:
        os.close(lock)
        return None
    return Attached(replica, lock, conn)


def free_replicas(folder: Path, model: ModelConfig) -> list[tuple[Path, Replica]]:
    """Registered replicas holding `model`'s weights and engine (`ModelConfig.load_key`) that no driver holds now;
    a session on one may change its generation settings, system prompt and batch size."""
    free = []
    for path, replica in registered(folder):
        if not model.served_by(ModelConfig.model_validate_json(replica.model)):
            continue
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            fcntl.flock(f, fcntl.LOCK_UN)
        free.append((path, replica))
    return free


def listener(idle_s: float) -> tuple[Listener, bytes]:
    """The replica's socket, in multiprocessing's private temp folder; `accept` gives up after `idle_s`."""
    key = secrets.token_bytes(16)
    lst = Listener(family="AF_UNIX", authkey=key)
    lst._listener._socket.settimeout(idle_s)  # type: ignore[attr-defined]
    return lst, key


class ServedLauncher:
    """Attaches the driver to the served replicas it was given (`held`, by replica name), once each; a replica
    that has died since is replaced by a worker that `fallback` starts on its GPUs."""

    def __init__(self, held: dict[str, tuple[Path, Replica]], fallback: Launcher) -> None:
        self.held, self.fallback = held, fallback

    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str
              ) -> tuple[WorkerProcess, Connection]:
        if spec.name in self.held:
            path, replica = self.held.pop(spec.name)
            got = attach(path, replica, model_json, batch_size, output_dir)
            if got is not None:
                return got, got.conn
            if _alive(replica.pid):
                raise RunError(f"served replica {replica.name} (pid {replica.pid}) was taken by another run; run "
                               "again to use the replicas left, or without --serve")
        return self.fallback.start(spec, model_json, batch_size, output_dir)


def serve_replica(spec: WorkerSpec, model_json: str, batch_size: int, folder: str, idle_s: float) -> None:
    """Entry point of a served replica (a process of `evalfleet serve`): load once, register, answer runs one
    after another until idle for `idle_s` or stopped (SIGTERM)."""
    from evalfleet.engine.replica import die_with_parent, load_replica, setup_process

    setup_process(spec, managed=False)
    die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `evalfleet serve --stop`: unregister, free the GPUs
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is `evalfleet serve`'s, which stops its replicas
    t0 = time.perf_counter()
    backend, _, stream, _ = load_replica(spec, model_json, batch_size, folder, None)
    held = Held(backend, stream, model_json, batch_size)
    lst, key = listener(idle_s)
    path = register(Path(folder), Replica(spec.name, spec.gpus, os.getpid(), str(lst.address), key.hex(), model_json,
                                          batch_size, spec.threads, round(time.perf_counter() - t0, 2)))
    try:
        while True:
            try:
                conn = lst.accept()
            except TimeoutError:
                return  # idle
            except (OSError, AuthenticationError, EOFError):
                continue
            try:
                hello = conn.recv()
            except (EOFError, OSError):
                conn.close()
                continue
            if isinstance(hello, Session):
                session(conn, hello, held, served=True)
            conn.close()
    finally:
        path.unlink(missing_ok=True)
        lst.close()
        backend.close()
