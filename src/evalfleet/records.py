"""The records every layer shares: plain data, no I/O. A sample travels as a `Sample` from its data row to a
worker, comes back as a `Result`, and is stored; a `WorkerSpec` says where a replica runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evalfleet.scoring.score import Score


SOURCE_KEY = "evalfleet_source"
"""A decoded image's `info` entry naming its source (`data/images.py: source_key`): the engine's key for the picture
then, instead of a hash of its patches for every sample that shows it."""


@dataclass(frozen=True)
class ImageRef:
    """An image by file path or by encoded bytes; `where` locates it for error messages. Decoded by
    `evalfleet.data.images.open_image`."""

    where: str
    path: str | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class FrameSampling:
    """How many of a video's frames a model gets (`data/video.py: frame_indices`): `nframe` evenly spaced
    (VLMEvalKit's `nframe`), or `fps` a second of the video (VLMEvalKit's `fps`), at most `max_frames_num`
    (lmms-eval's name), evenly chosen among those."""

    nframe: int | None = 8
    fps: float | None = None
    max_frames_num: int | None = 32


@dataclass(frozen=True)
class VideoRef:
    """A video by file path, or a folder of its frames, with how its frames are sampled; `where` locates it for
    error messages."""

    where: str
    path: str
    frames: FrameSampling = FrameSampling()


@dataclass(slots=True)
class Sample:
    """One evaluation item (slots: a million of them are held by a driver, ~100 MB less without a dict each)."""

    dataset: str
    id: str
    question: str
    prompt: str
    answers: list[str] = field(default_factory=list)
    images: list[ImageRef] = field(default_factory=list)
    source: str = ""
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    context: list[dict[str, str]] = field(default_factory=list)
    """Chat messages before the prompt: the dataset's system prompt and few-shot turns."""
    video: VideoRef | None = None


@dataclass
class Result:
    """One sample's outcome at one stage."""

    dataset: str
    sample_id: str
    output: str | None
    error: str | None = None
    worker: str | None = None
    seconds: float | None = None
    n_tokens: int | None = None
    prompt: str | None = None
    """The exact prompt the model was given (see `Prepared.prompts`)."""
    score: Score | None = None
    """Its score, computed once by the driver as it commits (`scoring.record.score_output`) and stored with it."""


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
