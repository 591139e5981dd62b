"""A video's frames as a model sees them (issue 39): which frames, sampled as the peers sample them, and the frames
themselves, decoded with PyAV from a file or read from a folder of pictures.

`frame_indices` is pure; `video_frames` opens the file. The settings are VLMEvalKit's: `nframe` frames evenly spaced,
or `fps` frames a second of the video; lmms-eval's `max_frames_num` caps the latter.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from evalfleet.data.media import IMAGE_EXTENSIONS
from evalfleet.records import FrameSampling


class VideoError(ValueError):
    """A video that cannot be read, or sampled with the settings given; the message says which and why."""


def frame_indices(total: int, sampling: FrameSampling, video_fps: float | None = None) -> list[int]:
    """Which of a video's `total` frames (numbered from 0 in decoding order) the model sees, in order.

    nframe: frame int(i * total / (nframe + 1)) for i = 1..nframe, the clip's two ends left out (VLMEvalKit's
    `frame_paths`). fps: every (video_fps / fps)-th frame from the first, as many as the clip's length holds
    (VLMEvalKit's `frame_paths_fps`); over `max_frames_num` of them, that many evenly spaced among them. A clip
    shorter than the frames asked repeats frames, as both peers do."""
    if total < 1:
        raise VideoError("the video has no frames")
    if sampling.fps is not None:
        if not video_fps or video_fps <= 0:
            raise VideoError("sampling by `fps` needs the video's frame rate (a folder of frames has none: use "
                             "`nframe`)")
        wanted = max(1, int(total / video_fps * sampling.fps))
        step = video_fps / sampling.fps
        indices = [min(total - 1, int(i * step)) for i in range(wanted)]
        cap = sampling.max_frames_num
        if cap is not None and len(indices) > cap:
            indices = [indices[int(j * len(indices) / cap)] for j in range(cap)]
        return indices
    if not sampling.nframe or sampling.nframe < 1:
        raise VideoError("set `nframe` (frames evenly spaced) or `fps` (frames a second) to sample a video")
    step = total / (sampling.nframe + 1)
    return [min(total - 1, int(i * step)) for i in range(1, sampling.nframe + 1)]


def _natural(name: str) -> list[Any]:
    """frame_2.jpg before frame_10.jpg."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def folder_frames(folder: Path) -> list[Path]:
    """A folder's pictures in frame order (numbers in their names compared as numbers)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural(p.name))


def video_frames(path: str | Path, sampling: FrameSampling) -> tuple[list[Any], list[int], float | None]:
    """The sampled frames of a video file (decoded with PyAV) or of a folder of pictures, as RGB PIL images; with
    their indices and the video's frame rate (None for a folder)."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        files = folder_frames(path)
        if not files:
            raise VideoError(f"{path}: a folder without pictures ({', '.join(IMAGE_EXTENSIONS)})")
        indices = frame_indices(len(files), sampling)
        return [Image.open(files[i]).convert("RGB") for i in indices], indices, None
    try:
        import av
    except ImportError:
        raise VideoError("reading video files needs PyAV: pip install av (or evalfleet[video])") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            video_fps = float(rate) if rate else None
            total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            indices = frame_indices(total, sampling, video_fps)
            container.seek(0)
            frames = _decode(container, stream, indices)
    except av.FFmpegError as err:
        raise VideoError(f"{path}: cannot decode ({err})") from None
    if len(frames) < len(indices):  # the container said more frames than it holds
        if not frames:
            raise VideoError(f"{path}: no frame could be decoded")
        frames += [frames[-1]] * (len(indices) - len(frames))
    return frames, indices, video_fps


def _decode(container: Any, stream: Any, indices: list[int]) -> list[Any]:
    """The frames at `indices` (in decoding order), decoding from the start and stopping after the last."""
    wanted: dict[int, int] = {}
    for i in indices:
        wanted[i] = wanted.get(i, 0) + 1
    last, out = max(indices), []
    for n, frame in enumerate(container.decode(stream)):
        if n in wanted:
            out += [frame.to_image()] * wanted[n]  # RGB
        if n >= last:
            break
    return out
