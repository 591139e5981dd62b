"""Decoding an image a Sample refers to."""

from __future__ import annotations

import hashlib
import io
import os
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


def source_key(ref: ImageRef) -> bytes | None:
    """What identifies a picture's content without reading its pixels: its file's path, size and modification time,
    or its embedded bytes' hash (None: the file cannot be stat'ed)."""
    if ref.data is not None or ref.path is None:
        return hashlib.blake2b(ref.data or b"", digest_size=16).digest()
    try:
        st = os.stat(ref.path)
    except OSError:
        return None
    return hashlib.blake2b(f"{os.path.realpath(ref.path)}\0{st.st_size}\0{st.st_mtime_ns}".encode(),
                           digest_size=16).digest()
