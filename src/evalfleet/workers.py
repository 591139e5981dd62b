"""Worker processes: each loads the model once on its device and answers chunks sent by the driver.

Protocol over a private pipe (one per worker, so a dying worker cannot corrupt a shared queue):
  driver -> worker: ("chunk", chunk_id, samples, seed) | None (stop)
  worker -> driver: ("ready", device_name, load_seconds) | ("results", chunk_id, [Result], [traceback])
                    | ("fatal", traceback)
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import traceback
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from evalfleet.config import ModelConfig
from evalfleet.datasets import Sample
from evalfleet.store import Result

if TYPE_CHECKING:
    from evalfleet.backends import Backend


@dataclass(frozen=True)
class WorkerSpec:
    """Where a worker runs: a GPU index (pinned with CUDA_VISIBLE_DEVICES) or the CPU with N threads."""

    name: str
    gpu: str | None
    threads: int


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the driver dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker exits on its next pipe read instead
    if os.getppid() == 1:
        os._exit(1)


def answer_batch(backend: Backend, batch: list[Sample], seed: int, worker: str) -> tuple[list[Result], list[str]]:
    """Answer one batch; a sample whose image is unreadable, or a batch that raises, becomes error results."""
    from evalfleet.backends import Request

    results: list[Result] = []
    logs: list[str] = []
    requests, ready = [], []
    for s in batch:
        try:
            images = [ref.open() for ref in s.images]
        except ValueError as err:
            results.append(Result(s.dataset, s.id, None, str(err), worker))
            continue
        requests.append(Request(s.prompt, images, seed ^ zlib.crc32(f"{s.dataset}/{s.id}".encode())))
        ready.append(s)
    if not ready:
        return results, logs
    t0 = time.perf_counter()
    try:
        gens = backend.generate(requests)
    except Exception as err:
        tb = traceback.format_exc()
        logs.append(f"[{worker}] batch of {len(ready)} failed ({ready[0].dataset}: {ready[0].id}...):\n{tb}")
        return results + [Result(s.dataset, s.id, None, f"{type(err).__name__}: {err}", worker) for s in ready], logs
    per_sample = (time.perf_counter() - t0) / len(ready)
    results += [Result(s.dataset, s.id, g.text, None, worker, per_sample, g.n_tokens) for s, g in zip(ready, gens)]
    return results, logs


def worker_main(conn: Connection, spec: WorkerSpec, model_json: str, batch_size: int) -> None:
    """Entry point of a spawned worker process."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    if spec.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(spec.gpu)
    try:
        import torch

        torch.set_num_threads(spec.threads)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # N workers' loading bars would garble the live view
        from evalfleet.backends import load_backend

        t0 = time.perf_counter()
        device = "cuda" if spec.gpu is not None else "cpu"
        backend = load_backend(ModelConfig.model_validate_json(model_json), device)
        label = torch.cuda.get_device_name(0) if spec.gpu is not None else f"CPU x{spec.threads}"
        conn.send(("ready", label, time.perf_counter() - t0))
    except Exception:
        conn.send(("fatal", traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return  # driver is gone
        if msg is None:
            return
        _, chunk_id, samples, seed = msg
        for i in range(0, len(samples), batch_size):
            results, logs = answer_batch(backend, samples[i : i + batch_size], seed, spec.name)
            conn.send(("results", chunk_id, results, logs))
