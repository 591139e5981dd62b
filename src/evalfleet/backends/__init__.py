"""Inference backends behind one small protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from evalfleet.config import ModelConfig


@dataclass
class Request:
    """One prompt to answer: the rendered user message and its decoded images."""

    prompt: str
    images: list[Any]
    seed: int


@dataclass
class Generation:
    """A backend's answer to one Request."""

    text: str
    n_tokens: int


@runtime_checkable
class Backend(Protocol):
    """Generates answers for a batch of requests; one instance lives in each worker process."""

    device: str

    def generate(self, requests: list[Request]) -> list[Generation]: ...


def load_backend(cfg: ModelConfig, device: str) -> Backend:
    """Instantiate the configured backend on `device` ("cpu" or "cuda")."""
    if cfg.backend == "transformers":
        from evalfleet.backends.transformers_backend import TransformersBackend

        return TransformersBackend(cfg, device)
    raise ValueError(f"unknown backend {cfg.backend!r}")
