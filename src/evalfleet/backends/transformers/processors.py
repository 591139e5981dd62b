"""VLM processors where torchvision is missing or broken.

transformers 5.x builds every Qwen2-VL-style processor with a video processor, and that needs torchvision: without
it `AutoProcessor.from_pretrained` fails even for images alone. torchvision is a separate install that must match
the torch build exactly (no CPU wheel of the pinned torch exists on PyPI; a CUDA wheel on a CPU torch fails at
import with "operator torchvision::nms does not exist"). evalfleet sends images only, so where torchvision cannot
be imported the processors are built without their video part: videos are then refused, images work.
"""

from __future__ import annotations

import importlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("evalfleet")

TORCHVISION_FIX = (
    "VLM processors in transformers 5 import torchvision for their video part. Install the torchvision built for "
    "your torch (e.g. torch 2.11 -> torchvision 0.26, from the same index as torch), or uninstall a mismatched one: "
    "evalfleet then loads image processors without their video part"
)


def torchvision_problem() -> str | None:
    """Why torchvision cannot be used here (not installed, or fails at import), or None when it can."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        return "torchvision is not installed"
    except Exception as err:  # noqa: BLE001 - a build of another torch fails in its operator registrations
        return f"torchvision fails at import ({type(err).__name__}: {err})"
    return None


def without_video_processor() -> bool:
    """Where torchvision cannot be used, make transformers' processors skip their video processor; returns whether
    they do. Idempotent; the patch is on `ProcessorMixin`, i.e. for the whole process (a worker holds one model)."""
    why = torchvision_problem()
    if why is None:
        return False
    from transformers import processing_utils

    mixin: Any = processing_utils.ProcessorMixin
    if getattr(mixin, "_evalfleet_without_video", False):
        return True
    get_attributes = mixin.get_attributes.__func__

    def attributes(cls: type) -> list[str]:
        return [name for name in get_attributes(cls) if name != "video_processor"]

    mixin.get_attributes = classmethod(attributes)
    mixin._evalfleet_without_video = True
    log.info("%s: VLM processors load without their video part (images only)", why)
    return True



class CachedImageProcessor:
    """A VLM processor's image processor that preprocesses each picture once (issue 37): the samples of one picture
    come together (`queue.make_chunks`) and a worker decodes it to one image object (`worker_loop.DecodedImages`),
    so its patches and grid are kept by that object's identity (the object itself held, so its id is not reused),
    up to `keep_bytes` of patches. Outputs other than `pixel_values` and `image_grid_thw` (processors this does not
    know) go through uncached. Everything else is the wrapped processor's.

    `compact` (the continuous engine's requests): the call's `pixel_values` are empty and `pictures()` gives each
    image its kept patches (in `dtype`): the engine takes a sample's patches from there, not from a batch of every
    sample's copies (concatenating 128 copies of a 448x448 picture's patches and cutting them apart again took ~3
    of the 6 ms a sample spent in `prepare` on 2 cores, `bench/probes/prepare_profile.py`). `threads` > 1: a call's
    new pictures are preprocessed that many at once."""

    def __init__(self, inner: Any, keep_bytes: int = 512 * 2**20, compact: bool = False, dtype: Any = None,
                 threads: int = 1) -> None:
        self.inner, self.keep_bytes, self.compact, self.dtype = inner, keep_bytes, compact, dtype
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="pictures") if threads > 1 else None
        self.kept: dict[int, tuple[Any, Any, Any]] = {}  # id(image) -> (image, patches, grid), oldest first
        self.held = 0
        self.processed = 0
        self._last = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def pictures(self) -> list[Any] | None:
        """Each image's patches in this thread's last call, in order (None: that call went to the inner processor
        uncached)."""
        return getattr(self._last, "patches", None)

    def __call__(self, images: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch
        from transformers import BatchFeature

        self._last.patches = None
        flat = [x for row in images for x in (row if isinstance(row, list | tuple) else [row])] \
            if isinstance(images, list | tuple) else [images]
        found = {id(x): self.kept.pop(id(x)) for x in flat if id(x) in self.kept}  # (put back below: most recent)
        for key, entry in found.items():
            self.kept[key] = entry
        new = list({id(x): x for x in flat if id(x) not in found}.values())
        # Each new picture on its own (its patches are then a whole tensor: kept without a copy), up to `threads`
        # at once (PIL and numpy let go of the interpreter meanwhile).
        outs = list(self.pool.map(lambda x: self.inner([x], *args, **kwargs), new)) if self.pool and len(new) > 1 \
            else [self.inner([x], *args, **kwargs) for x in new]
        for image, out in zip(new, outs):
            pixels, grids = out.get("pixel_values"), out.get("image_grid_thw")
            if set(out.keys()) - {"pixel_values", "image_grid_thw"} or not isinstance(pixels, torch.Tensor):
                return self.inner(images, *args, **kwargs)  # a processor this cache does not know
            self.processed += 1
            found[id(image)] = (image, pixels.to(self.dtype) if self.dtype is not None else pixels, grids[0])
            self._keep(*found[id(image)])
        self._last.patches = [found[id(x)][1] for x in flat]
        pixels = torch.empty(0) if self.compact else torch.cat([found[id(x)][1] for x in flat])
        return BatchFeature({"pixel_values": pixels, "image_grid_thw": torch.stack([found[id(x)][2] for x in flat])})

    def _keep(self, image: Any, patches: Any, grid: Any) -> None:
        self.kept[id(image)] = (image, patches, grid)
        self.held += patches.numel() * patches.element_size()
        while self.held > self.keep_bytes and len(self.kept) > 1:
            _, old, _ = self.kept.pop(next(iter(self.kept)))
            self.held -= old.numel() * old.element_size()
