"""Inference backends behind one small protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from evalfleet.datasets import plain_layout

if TYPE_CHECKING:
    from evalfleet.config import ModelConfig


@dataclass
class Request:
    """One prompt to answer: the rendered user message and its decoded images."""

    prompt: str
    images: list[Any]
    seed: int
    name: str = ""
    """`dataset/sample id`, for outputs written to files (edited images)."""
    context: list[dict[str, str]] = field(default_factory=list)
    """Messages before the user message: the dataset's system prompt and few-shot turns."""

    def messages(self, system_prompt: str | None, user: Any) -> list[dict[str, Any]]:
        """The chat: a system message (the dataset's, else the model's `system_prompt`), the few-shot turns,
        then the user message with content `user`."""
        context = self.context
        if system_prompt and not (context and context[0]["role"] == "system"):
            context = [{"role": "system", "content": system_prompt}, *context]
        return [*context, {"role": "user", "content": user}]

    def plain_text(self, system_prompt: str | None) -> str:
        """The chat as one text for models without a chat template (`datasets.plain_layout`), then the prompt."""
        *before, _ = self.messages(system_prompt, self.prompt)
        return plain_layout(before) + self.prompt


@dataclass
class Generation:
    """A backend's answer to one Request."""

    text: str
    n_tokens: int
    error: str | None = None
    """Why this request got no answer (e.g. an endpoint's error after retries); the sample records it."""


@dataclass
class Prepared:
    """A batch ready for the device: tokenized, images preprocessed (CPU tensors)."""

    inputs: Any
    seed: int
    prompts: list[str]
    """The exact prompt each request was given (chat-templated text, or the messages as JSON), for the store."""


@runtime_checkable
class Backend(Protocol):
    """Answers batches of requests; one instance lives in each worker process.

    `prepare` is CPU work (templating, tokenizing, image preprocessing) and runs in a prefetch thread
    while the device is busy with `generate` of the previous batch. It works from construction on, before
    `load`, so a worker prepares its first batch while the weights load. A backend may also offer
    `warm_up(prepared)`, called after `load` with the first batch: one-time work for batches of its shape.
    """

    label: str
    """Where it runs, for progress lines (e.g. "NVIDIA H100 80GB HBM3 x2 [static]")."""

    def load(self) -> None:
        """The slow part of starting: load the weights, start the server."""

    def prepare(self, requests: list[Request]) -> Prepared: ...

    def generate(self, prepared: Prepared) -> list[Generation]: ...


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


class ReplicaLost(RuntimeError):
    """The replica can answer no more (its server died): the worker ends and the driver requeues its batch."""


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA out-of-memory, or the CPU allocator failing (e.g. under RLIMIT_AS)."""
    import torch

    text = str(err)
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def free_memory() -> None:
    """Return cached blocks to the device after an out-of-memory error or an unload."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
