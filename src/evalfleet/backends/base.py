"""What every backend shares: the request and answer records, the Backend and Stream protocols (a worker runs
every backend as a Stream: its own, or `batched.WholeBatches` over its `generate`), and the errors a worker tells
apart (out of memory, a lost replica)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from evalfleet.prompts import plain_layout


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
        """The chat as one text for models without a chat template (`prompts.plain_layout`), then the prompt."""
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
    """The backend's own: the continuous engine's `Row`s, a padded batch for `generate`, an endpoint's messages."""
    requests: list[Request]
    """What was prepared, to prepare again in parts (a batch halved after out-of-memory)."""
    prompts: list[str]
    """The exact prompt each request was given (chat-templated text, or the messages as JSON), for the store."""

    @property
    def seed(self) -> int:
        """The batch's seed for backends that sample a whole batch from one generator: its first request's."""
        return self.requests[0].seed


class Stream(Protocol):
    """Requests in, answers out as each ends: the worker adds prepared batches while the stream is `hungry` and
    calls `step` while it is `busy`. The one out-of-memory rule: a stream that runs out of memory runs fewer
    requests at once, down to one, and a request that does not fit alone is answered with an error."""

    busy: bool
    hungry: bool
    batch: int
    """Requests per prepared batch it takes now."""
    log: list[str]
    """Lines for the run log (a failed batch's traceback, a halving), taken by the worker."""
    counts: Counter[str]
    """What its prefills did since the worker last took them: prompt tokens, those copied from a held prefix
    (`shared_tokens`), images, those encoded, prefill seconds (the continuous engine; empty for whole batches)."""

    def add(self, prepared: Prepared, keys: list[Any]) -> None:
        """Queue the requests of `prepared`, the i-th known by `keys[i]`."""

    def step(self) -> list[tuple[Any, Generation]]:
        """Advance; the answers that ended, by key."""
        ...


class Backend(Protocol):
    """Answers requests; one instance lives in each worker process. Backends subclass it, so the optional
    abilities below have their defaults. What each kind needs of the worker is declared in `backends/kinds.py`.

    `prepare` is CPU work (templating, tokenizing, image preprocessing) and runs in a prefetch thread
    while the device is busy with the requests before. It works from construction on, before `load`, so a worker
    prepares its first batch while the weights load.
    """

    label: str
    """Where it runs, for progress lines (e.g. "NVIDIA H100 80GB HBM3 x2 [generate]")."""
    on_step: Callable[[int, int], None] | None = None
    """Set by the worker: called with (step, steps) as a long generation advances (denoising), for its bar."""
    picture_threads: int = 1
    """Threads that decode and preprocess a batch's new pictures beside the device's work (a GPU backend: its
    worker's share of the host's cores, up to 8; on a CPU the cores are the model's)."""
    startup: dict[str, float] = {}  # noqa: RUF012 (read only; a backend assigns its own)
    """Set by `load`: seconds of its phases (`weights`, `kernels`) for the start-up summary; empty if unknown."""

    def load(self) -> None:
        """The slow part of starting: load the weights, start the server."""

    def prepare(self, requests: list[Request]) -> Prepared: ...

    def generate(self, prepared: Prepared) -> list[Generation]:
        """A whole batch's answers, in order (backends without a stream of their own)."""
        raise NotImplementedError

    def stream(self, slots: int, first: Prepared | None) -> Stream | None:
        """Its own stream of `slots` requests at a time, sized for prompts like `first`, if it batches continuously;
        default None: `backends.stream_of` streams its `generate` in whole batches of `slots`."""
        return None

    def close(self) -> None:
        """Stop what `load` started (servers); default: nothing."""

    def reconfigure(self, cfg: Any) -> None:
        """Take model settings `cfg` that load the same weights (`ModelConfig.load_key`) but may generate otherwise:
        a later stage or run on this loaded replica. Its stream, if any, is made again by the caller."""
        self.cfg = cfg


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
