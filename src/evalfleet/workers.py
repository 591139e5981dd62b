"""Worker processes: each loads one model replica (on 0, 1 or k GPUs) once and answers chunks.

Protocol over a private pipe (one per worker, so a dying worker cannot corrupt a shared queue):
  driver -> worker: ("chunk", chunk_id, samples, seed) | None (stop)
  worker -> driver: ("ready", device_label, load_seconds) | ("results", chunk_id, [Result], [log line])
                    | ("stopped", unload_seconds) | ("fatal", traceback)
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from evalfleet.config import ModelConfig
from evalfleet.datasets import Sample
from evalfleet.store import Result

if TYPE_CHECKING:
    from evalfleet.backends import Backend

GROW_AFTER = 8
"""Successful batches in a row after which a batch size halved by out-of-memory doubles again."""


@dataclass(frozen=True)
class WorkerSpec:
    """A replica: the GPUs it is pinned to (CUDA_VISIBLE_DEVICES ids; none = CPU) and its limits."""

    name: str
    gpus: tuple[str, ...]
    threads: int
    max_memory_per_gpu: int | None = None
    """Bytes; enforced in the worker through torch's per-process memory fraction."""
    cpu_headroom: int | None = None
    """CPU workers: bytes of address space allowed beyond the loaded model (RLIMIT_AS)."""


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


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the driver dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker exits on its next pipe read instead
    if os.getppid() == 1:
        os._exit(1)


def _limit_address_space(headroom: int) -> None:
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + headroom, resource.RLIM_INFINITY))


def answer_batch(backend: Backend, batch: list[Sample], seed: int, log: list[str]) -> list[Result]:
    """Answer one batch. Unreadable images become error results; out-of-memory propagates to the caller.

    Any other exception fails the batch's samples with its message; its traceback goes to `log`.
    """
    from evalfleet.backends import Request, is_out_of_memory

    results: list[Result] = []
    requests, ready = [], []
    for s in batch:
        try:
            images = [ref.open() for ref in s.images]
        except ValueError as err:
            results.append(Result(s.dataset, s.id, None, str(err)))
            continue
        requests.append(Request(s.prompt, images, seed ^ zlib.crc32(f"{s.dataset}/{s.id}".encode())))
        ready.append(s)
    if not ready:
        return results
    t0 = time.perf_counter()
    try:
        gens = backend.generate(requests)
    except Exception as err:
        if is_out_of_memory(err):
            raise
        first = f"{ready[0].dataset}/{ready[0].id}"
        log.append(f"batch of {len(ready)} starting at {first} failed:\n{traceback.format_exc()}")
        return results + [Result(s.dataset, s.id, None, f"{type(err).__name__}: {err}") for s in ready]
    per_sample = (time.perf_counter() - t0) / len(ready)
    return results + [Result(s.dataset, s.id, g.text, None, None, per_sample, g.n_tokens) for s, g in zip(ready, gens)]


def answer_chunk(
    backend: Backend, samples: list[Sample], seed: int, sizer: BatchSizer, log: list[str]
) -> Iterator[list[Result]]:
    """Yield the results of each batch of a chunk, halving the batch size on out-of-memory."""
    from evalfleet.backends import free_memory, is_out_of_memory

    todo = list(samples)
    while todo:
        batch = todo[: sizer.size]
        try:
            results = answer_batch(backend, batch, seed, log)
        except Exception as err:
            assert is_out_of_memory(err)
            del err
            free_memory()
            if len(batch) == 1:
                s = batch[0]
                results = [Result(s.dataset, s.id, None, "out of memory even in a batch of 1 "
                                  f"({len(s.prompt)} prompt characters, {len(s.images)} image(s))")]
                log.append(f"{s.dataset}/{s.id} does not fit in memory even alone")
            else:
                sizer.shrink(len(batch))
                log.append(f"out of memory at batch size {len(batch)}: halving to {sizer.size}")
                continue
        else:
            sizer.succeeded()
        todo = todo[len(batch) :]
        yield results


def worker_main(conn: Connection, spec: WorkerSpec, model_json: str, batch_size: int) -> None:
    """Entry point of a spawned worker process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    if spec.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)
    try:
        import torch

        torch.set_num_threads(spec.threads)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # N workers' loading bars would garble the live view
        from evalfleet.backends import free_memory, load_backend

        t0 = time.perf_counter()
        backend = load_backend(ModelConfig.model_validate_json(model_json), len(spec.gpus), spec.max_memory_per_gpu)
        load_s = time.perf_counter() - t0
        if spec.cpu_headroom is not None and not spec.gpus:
            _limit_address_space(spec.cpu_headroom)
        conn.send(("ready", backend.label, load_s))
    except Exception:
        conn.send(("fatal", traceback.format_exc()))
        return
    sizer = BatchSizer(batch_size)
    log: list[str] = []  # lines for the driver's log, sent with the next results
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return  # driver is gone
        if msg is None:
            break
        _, chunk_id, samples, seed = msg
        for results in answer_chunk(backend, samples, seed, sizer, log):
            conn.send(("results", chunk_id, results, log[:]))
            log.clear()
    t0 = time.perf_counter()
    del backend
    gc.collect()
    free_memory()
    conn.send(("stopped", time.perf_counter() - t0))
