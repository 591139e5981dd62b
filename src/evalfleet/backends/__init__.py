"""Inference backends behind one small protocol (`backends.base`); `make_backend` picks one and `stream_of` gives
the Stream a worker runs it through. Thin adapters (`openai_backend`, `server`, `diffusers_backend`) lie beside
the in-process engine's own folder (`transformers/`); `kinds` says what each kind needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evalfleet.backends.base import (
    Backend,
    Generation,
    Prepared,
    ReplicaLost,
    Request,
    Stream,
    free_memory,
    is_out_of_memory,
)
from evalfleet.backends.batched import WholeBatches

if TYPE_CHECKING:
    from evalfleet.config import ModelConfig


def make_backend(
    cfg: ModelConfig, n_gpus: int, max_memory_per_gpu: int | None = None, output_dir: str = "."
) -> Backend:
    """The configured backend for the CPU (n_gpus=0) or the visible GPUs, ready to `prepare`; `load` it before
    `generate`.

    `output_dir` is the run folder, where backends that produce files (edited images) write them.
    """
    if cfg.backend == "openai":
        from evalfleet.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(cfg, cfg.server.urls, cfg.path)
    if cfg.backend == "server":
        from evalfleet.backends.server import ManagedServer

        return ManagedServer(cfg, n_gpus, output_dir)
    if cfg.backend == "diffusers":
        from evalfleet.backends.diffusers_backend import DiffusersBackend

        return DiffusersBackend(cfg, n_gpus, output_dir)
    from evalfleet.backends.transformers.backend import TransformersBackend

    return TransformersBackend(cfg, n_gpus, max_memory_per_gpu)


def stream_of(backend: Backend, slots: int, first: Prepared | None) -> Stream:
    """The Stream a worker runs `backend` through: its own (continuous batching over `slots` decode slots, sized for
    prompts like `first`), else its `generate` in whole batches of `slots` requests."""
    return backend.stream(slots, first) or WholeBatches(backend, slots)


__all__ = ["Backend", "Generation", "Prepared", "ReplicaLost", "Request", "Stream", "free_memory",
           "is_out_of_memory", "make_backend", "stream_of"]
