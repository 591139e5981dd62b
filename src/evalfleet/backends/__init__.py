"""Inference backends behind one small protocol (`backends.base`); `make_backend` picks one."""

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
    from evalfleet.backends.transformers_backend import TransformersBackend

    return TransformersBackend(cfg, n_gpus, max_memory_per_gpu)


__all__ = ["Backend", "Generation", "Prepared", "ReplicaLost", "Request", "Stream", "free_memory",
           "is_out_of_memory", "make_backend"]
