"""Columns that hold media no setting maps (issue 39, item 1): a row whose pictures or video sit in a column the
dataset's `fields` do not read would otherwise be answered as a text-only prompt, in silence.

A column looks like media by its values, not its name alone (an `image_id` of numbers is not a picture): file names
with an image or video extension, bytes, `{"bytes": ...}` or `{"path": ...}` cells, lists of those, base64 text that
begins as an image file does, or (in a column named for video or frames) a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".dcm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
BASE64_IMAGES = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")
"""How base64 text of a PNG, JPEG, GIF and WebP file begins."""
FOLDER_NAMES = ("video", "frame", "clip")
HEAD_ROWS = 1000
"""Rows looked at: media columns show in a dataset's first rows."""


@dataclass
class MediaColumn:
    """A column whose cells look like media that the dataset's settings leave unread."""

    column: str
    kind: str
    """`image` or `video`."""
    first: int
    """Line (or record) number of the first row where it does."""
    rows: int
    """Rows of those looked at where it does."""


def media_kind(column: str, value: Any, root: Path | None = None) -> str | None:
    """`image` or `video` when `value` (a cell of `column`) looks like media, else None."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        kinds = {media_kind(column, v, root) for v in value}
        return "video" if "video" in kinds else "image" if "image" in kinds else None
    if isinstance(value, (bytes, bytearray)):
        return "image"
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return "image"
        return media_kind(column, value.get("path"), root) if value.get("path") else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    lower = text.lower()
    # A file name, not a sentence ending in one ("see a.png"): no spaces, or an existing file's
    named = "\n" not in text and (" " not in text or (root is not None and len(text) < 4096
                                                     and os.path.isfile(root / text)))
    if named and lower.endswith(VIDEO_EXTENSIONS):
        return "video"
    if named and lower.endswith(IMAGE_EXTENSIONS):
        return "image"
    if len(text) > 64 and " " not in text and text.startswith(BASE64_IMAGES):
        return "image"
    if root is not None and any(n in column.lower() for n in FOLDER_NAMES) and len(text) < 4096 \
            and os.path.isdir(root / text):
        return "video"  # a folder of frames
    return None


def unmapped_media(rows: Any, mapped: set[str], kept: set[str], root: Path | None = None) -> list[MediaColumn]:
    """The media columns of the first `HEAD_ROWS` rows ((line, row) pairs; a row that failed to parse is skipped)
    that are neither `mapped` (read by the dataset's fields) nor `kept` (listed in `columns:`, as metadata only)."""
    found: dict[str, MediaColumn] = {}
    for n, (lineno, row) in enumerate(rows):
        if n >= HEAD_ROWS:
            break
        if not isinstance(row, dict):
            continue
        for column, value in row.items():
            if column in mapped or column in kept:
                continue
            if (what := media_kind(column, value, root)) is None:
                continue
            seen = found.get(column)
            if seen is None:
                found[column] = MediaColumn(column, what, lineno, 1)
            else:
                seen.rows += 1
                seen.kind = "video" if what == "video" else seen.kind
    return list(found.values())
