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

