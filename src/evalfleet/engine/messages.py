"""What the driver and a worker say to each other over the worker's private pipe (or a Ray actor's socket).

Driver -> worker: `Work` (a chunk; the first ones come as the worker starts, before it is ready, so it prepares
them while its model loads), `TakeBack` (for a worker gone idle), then `Stop` once every result is in (or on a
signal).
Worker -> driver: `Ready` once loaded, `Results` per batch, `GivenBack` for each `TakeBack`, `Step` (denoising
progress), `Heartbeat` every HEARTBEAT_S from a thread while the process lives, `Unloaded` after `Stop`, or
`Fatal` if it could not start.

Every message is a frozen dataclass, pickled by the connection. `Ready.protocol` lets a driver refuse a worker
running another version of this protocol (a stage's workers may run under another Python environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evalfleet.records import Result, Sample

PROTOCOL = 4
"""Bumped whenever a message below changes."""


@dataclass(frozen=True)
class Work:
    chunk_id: int
    samples: list[Sample]
    seed: int


@dataclass(frozen=True)
class TakeBack:
    """Give back the later half of chunk `chunk_id`'s samples not yet taken into a batch (another worker is idle)."""

    chunk_id: int


@dataclass(frozen=True)
class GivenBack:
    """The samples of chunk `chunk_id` given back (none if every one had started): this worker will not answer
    them."""

    chunk_id: int
    sample_ids: list[str]


@dataclass(frozen=True)
class Stop:
    """Unload and exit; a batch not yet started is not started. With `keep`, stay loaded instead: after
    `Unloaded` (of nothing) the worker waits on the same connection for the next stage's session (a `Session`),
    or a plain `Stop`."""

    keep: bool = False


@dataclass(frozen=True)
class Session:
    """A run's (or a later stage's) use of a loaded replica: its model settings (the same weights; generation
    settings, system prompt and batch size may differ), batch size and run folder. Answered by `Ready`."""

    model_json: str
    batch_size: int
    output_dir: str


@dataclass(frozen=True)
class Ready:
    device: str
    """What the replica runs on, for people (e.g. `cuda:0 (NVIDIA H200)`, or `... on <node>` for Ray)."""
    load_s: float
    python: str
    """The interpreter it runs under (a stage may name another environment's)."""
    protocol: int = PROTOCOL
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds of each start-up phase it measured (`observe/startup.py: WORKER_PHASES`, process start aside)."""
    started: float = 0.0
    """Wall clock when its entry point began: the driver takes process start from its own spawn time."""


@dataclass(frozen=True)
class Results:
    chunk_id: int
    results: list[Result]
    log: list[str] = field(default_factory=list)
    """Lines for the driver's log (failed batches' tracebacks, out-of-memory halvings)."""
    counts: dict[str, float] = field(default_factory=dict)
    """The worker's prefills since its last results (`Stream.counts`): prompt tokens, shared, images, encoded."""


@dataclass(frozen=True)
class Step:
    step: int
    steps: int


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class Unloaded:
    seconds: float


@dataclass(frozen=True)
class Fatal:
    traceback: str


ToWorker = Work | TakeBack | Stop | Session
FromWorker = Ready | Results | GivenBack | Step | Heartbeat | Unloaded | Fatal
