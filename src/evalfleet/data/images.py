"""Decoding an image a Sample refers to."""

from __future__ import annotations

import io
from typing import Any

from evalfleet.records import ImageRef


def open_image(ref: ImageRef) -> Any:
    """Decode to an RGB PIL image; raises ValueError naming `ref.where` when unreadable."""
    from PIL import Image

    try:
        img = Image.open(ref.path if ref.path is not None else io.BytesIO(ref.data or b""))
        img.load()
        return img.convert("RGB")
    except Exception as err:  # PIL raises several types for bad files
        raise ValueError(f"{ref.where}: unreadable image ({type(err).__name__}: {err})") from None
