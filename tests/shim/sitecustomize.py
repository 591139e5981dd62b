"""Test-only shim, auto-loaded by Python when this folder is on PYTHONPATH.

Without torchvision, transformers 5.x refuses to build VLM processors (e.g. Qwen2-VL) because
their video processor needs it. The shim makes processors skip their video part. It patches
`transformers.processing_utils` lazily, on first import, so interpreter startup stays cheap.
It is a no-op where torchvision is installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_TARGET = "transformers.processing_utils"


def _patch(module: ModuleType) -> None:
    """Drop `video_processor` from the sub-processors every processor loads and expects."""
    mixin = module.ProcessorMixin
    if getattr(mixin, "_video_processor_shim", False):
        return
    get_attributes = mixin.get_attributes.__func__

    def without_video(cls: type) -> list[str]:
        return [name for name in get_attributes(cls) if name != "video_processor"]

    mixin.get_attributes = classmethod(without_video)
    mixin._video_processor_shim = True


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Meta-path hook that patches the target module right after it executes."""

    video_processor_shim = True

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def install_video_processor_shim() -> None:
    """Let transformers processors load without torchvision (no-op if torchvision is installed)."""
    if importlib.util.find_spec("torchvision") is not None:
        return
    if _TARGET in sys.modules:
        _patch(sys.modules[_TARGET])
    elif not any(getattr(finder, "video_processor_shim", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


install_video_processor_shim()
