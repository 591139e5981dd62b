"""A replica's process: its environment, and loading its model and engine. Shared by the driver's workers
(`worker.worker_main`) and warm replicas (`served.serve_replica`)."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import resource
import select
import signal
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from evalfleet.assets import default_cache_dir
from evalfleet.config import ModelConfig
from evalfleet.records import WorkerSpec
from evalfleet.stopping import ignore_stop_signals

if TYPE_CHECKING:
    from evalfleet.backends import Backend, Stream
    from evalfleet.engine.worker_loop import ReadyBatch, WorkerLoop


def die_with_parent() -> None:
    """End this process when the driver dies (even by SIGKILL): Linux kills it when its parent dies
    (PR_SET_PDEATHSIG), and a process forked from multiprocessing's fork server, whose parent is that server,
    watches the driver itself (`watch_driver`)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker exits on its next pipe read instead
    if os.getppid() == 1:
        os._exit(1)
    driver = mp.parent_process()  # the process that started this one through the fork server
    if driver is not None and driver.pid is not None and driver.pid != os.getppid():
        watch_driver(driver.pid)


def watch_driver(pid: int) -> None:
    """Kill this process as soon as process `pid` ends, from a thread waiting on its pidfd. A worker forked from
    the fork server is not the driver's child: the server outlives a SIGKILLed driver (every process forked from it
    holds the server's "alive" pipe open), and so would the worker, until its batch ended and its pipe to the driver
    failed (9-15 s on CPU), holding its GPU's memory while a resume starts."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)  # gone already
    except (OSError, AttributeError):
        return  # no pidfd (not Linux, Linux < 5.3): the worker exits on its next pipe write instead

    def wait() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)  # as PR_SET_PDEATHSIG would

    threading.Thread(target=wait, name="evalfleet-driver-watch", daemon=True).start()


def limit_address_space(headroom: int) -> None:
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + headroom, resource.RLIM_INFINITY))


def _lap(since: float) -> tuple[float, float]:
    """(seconds since `since`, now)."""
    now = time.perf_counter()
    return round(now - since, 3), now


def setup_process(spec: WorkerSpec, managed: bool) -> None:
    """A worker process's environment: it dies with its parent and leaves stop signals to it (`managed`), sees its
    GPUs only, and caches compiled kernels in evalfleet's cache folder (not /tmp, which Slurm jobs often get
    empty)."""
    if managed:
        die_with_parent()
        ignore_stop_signals()  # Ctrl-C, SIGTERM and SIGUSR1 are the driver's to handle
    if spec.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / "inductor"))


def load_replica(spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str, loop: WorkerLoop | None
                 ) -> tuple[Backend, Future[ReadyBatch | None] | None, Stream, dict[str, float]]:
    """Import, initialise CUDA, load the model and set up its engine: (backend, the first batch being prepared by
    `loop` while the model loaded, the Stream the worker runs it through, seconds of each phase)."""
    phases: dict[str, float] = {}  # start-up, observe/startup.py
    t = time.perf_counter()
    import torch

    torch.set_num_threads(spec.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # N workers' loading bars would garble the live view
    from evalfleet.backends import kinds, make_backend, stream_of

    model_cfg = ModelConfig.model_validate_json(model_json)
    if kinds.kind(model_cfg.backend).imports_torch:  # the bulk of transformers, else imported lazily
        import evalfleet.engine.preload  # noqa: F401  # else in the first config read, counted as the tokenizer's
    phases["imports"], t = _lap(t)
    if spec.gpus and torch.cuda.is_available():
        torch.cuda.init()
        phases["CUDA init"], t = _lap(t)
    backend = make_backend(model_cfg, len(spec.gpus), spec.max_memory_per_gpu, output_dir)
    phases["tokenizer"], t = _lap(t)
    first = loop.start(backend) if loop is not None else None  # prepared while the model loads
    backend.load()
    phases.update(backend.startup or {"weights": time.perf_counter() - t})
    t = time.perf_counter()
    ready = first.result() if first is not None and first.done() and first.exception() is None else None
    prepared = ready.prepared if ready is not None else None
    stream = stream_of(backend, batch_size, prepared)  # the engine's cache allocated, its decode step captured
    phases["graphs"], _ = _lap(t)
    return backend, first, stream, phases
