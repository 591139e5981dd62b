"""A dataset file's rows (read by `data/formats.py`) and the easy-vqa built-in become lists of Samples, their
pictures and videos resolved (`MediaResolver`); `data/load.py: load_samples` chooses the reader and gives the
samples their context, order and limits.

A malformed row becomes a Sample carrying an error (``file:line:field: reason``) so the run goes on;
a dataset that cannot be read at all raises ``DatasetError``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from evalfleet.config import DatasetConfig, FrameSettings
from evalfleet.data.formats import FORMATS, UNREADABLE, DatasetError, Row, RowError, detect_format, parquet_head
from evalfleet.data.media import HEAD_ROWS, VIDEO_EXTENSIONS, unmapped_media
from evalfleet.errors import not_utf8
from evalfleet.prompts import mcq_prompt, question_affixes, user_message
from evalfleet.records import FrameSampling, ImageRef, Sample, VideoRef

ID_COLUMNS = ("id", "index", "qid", "question_id")


def _answers(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = json.loads(value)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except json.JSONDecodeError:
            pass
    return [str(value)]


class MediaResolver:
    """Turns an image cell (path, base64 text, bytes, {"bytes": ...}, a list of those, or in CSV/TSV a JSON list) into
    ImageRefs, and a video cell (a file, or a folder of frames) into a VideoRef. Paths are relative to `root` and
    must stay inside it as written: `..` may not climb out of it, but a symbolic link inside it may point anywhere
    (image folders linked from scratch space are the usual cluster layout)."""

    def __init__(self, root: Path, base64_only: bool, absolute: bool = False) -> None:
        self.root = Path(os.path.abspath(root))
        self.base64_only = base64_only
        self.absolute = absolute

    def local(self, value: str, column: str, what: str) -> Path:
        """The path a cell names, inside `root` (or absolute where allowed); refused when it climbs out."""
        candidate = Path(os.path.normpath(self.root / os.path.expanduser(value)))  # `..` folded, links kept
        if not candidate.is_relative_to(self.root) and not (self.absolute and os.path.isabs(value)):
            raise RowError(column, f"{what} path {value!r} is outside the image folder {self.root}; set "
                                   "`image_root` to a folder that holds it, or `absolute_images: true` for "
                                   "absolute paths")
        return candidate

    def __call__(self, value: Any, column: str, where: str) -> list[ImageRef]:
        if value is None or value == "":
            return []
        if isinstance(value, (list, tuple)):
            return [ref for v in value for ref in self(v, column, where)]
        if isinstance(value, dict) and value.get("bytes") is not None:
            return [ImageRef(where, data=value["bytes"])]
        if isinstance(value, dict) and value.get("path"):
            value = value["path"]
        if isinstance(value, (bytes, bytearray)):
            return [ImageRef(where, data=bytes(value))]
        if not isinstance(value, str):
            raise RowError(column, f"unsupported image value of type {type(value).__name__}")
        if value.startswith("[") and value.endswith("]"):  # several pictures in one CSV/TSV cell
            try:
                listed = json.loads(value)
            except json.JSONDecodeError:
                raise RowError(column, "a cell that begins with [ must be a JSON list of pictures") from None
            return self(listed, column, where)
        if not self.base64_only and len(value) < 4096:
            candidate = self.local(value, column, "image")
            if candidate.is_file():
                return [ImageRef(where, path=str(candidate))]
            if len(value) < 256:
                raise RowError(column, f"image file not found: {candidate}")
        try:
            return [ImageRef(where, data=base64.b64decode(value, validate=True))]
        except (binascii.Error, ValueError):
            raise RowError(column, "neither an existing image path nor valid base64") from None

    def video(self, value: Any, column: str, where: str, frames: FrameSettings) -> VideoRef | None:
        """A row's video: a file with a video extension, or a folder of its frames."""
        if value is None or value == "":
            return None
        if isinstance(value, dict) and value.get("path"):
            value = value["path"]
        if not isinstance(value, str):
            raise RowError(column, f"a video is a file path or a folder of frames, not a {type(value).__name__}")
        path = self.local(value, column, "video")
        if path.is_file() and not path.name.lower().endswith(VIDEO_EXTENSIONS):
            raise RowError(column, f"{path} is not a video file ({', '.join(VIDEO_EXTENSIONS)}) nor a folder of "
                                   "frames")
        if not path.exists():
            raise RowError(column, f"video not found: {path}")
        return VideoRef(where, str(path), FrameSampling(frames.nframe, frames.fps, frames.max_frames_num))


class RowReader:
    """One dataset's rows become Samples: what is the same for every row (the id column, the fields, the template,
    the kept columns) is worked out once, not a million times."""

    def __init__(self, cfg: DatasetConfig, path: str, fmt: str, resolve: MediaResolver) -> None:
        self.cfg, self.name, self.path, self.resolve = cfg, cfg.name, path, resolve
        f = cfg.fields
        self.id_col, self.question, self.image, self.video = f.id, f.question, f.image, f.video
        self.frames = cfg.frames
        self.answer = f.answer
        self.vlmeval = fmt == "vlmeval"
        self.columns = list(cfg.columns)
        self.instruction = cfg.instruction
        self.affixes = question_affixes(cfg.prompt)

    def __call__(self, lineno: int, row: dict[str, Any]) -> Sample:
        where = f"{self.path}:{lineno}"
        id_col = self.id_col
        if id_col is None:
            id_col = next((c for c in ID_COLUMNS if c in row), None)  # the first one the row has
        value = row.get(id_col) if id_col else None
        sample_id = f"line{lineno}" if value is None or value == "" else str(value)
        question, answers, images, metadata, video = "", [], [], {}, None
        try:  # every field first, then the Sample at once (a million rows: each assignment counts)
            question = row.get(self.question)
            if question is None or question == "":
                question = ""
                raise RowError(self.question, "missing question")
            if type(question) is not str:
                question = str(question)
            if self.answer:
                answers = _answers(row.get(self.answer))
            if self.image and self.image in row:
                # VLMEvalKit stores a repeated image as the `index` of the row that holds it.
                images = self.resolve(row[self.image], self.image, f"{where}:{self.image}")
            if self.video and self.video in row:
                video = self.resolve.video(row[self.video], self.video, f"{where}:{self.video}", self.frames)
            shown = question
            if self.vlmeval:
                shown, options = mcq_prompt(question, row, self.instruction)
                if options:
                    metadata["options"] = options
            if self.columns and (kept := {c: row[c] for c in self.columns if row.get(c) not in (None, "")}):
                metadata["columns"] = kept
            prompt = self.prompt(row, shown, "options" in metadata)
        except RowError as err:
            return Sample(self.name, sample_id, question, "", answers, images, where, f"{where}:{err}", metadata,
                          video=video)
        return Sample(self.name, sample_id, question, prompt, answers, images, where, None, metadata, video=video)

    def prompt(self, row: dict[str, Any], question: str, mcq: bool) -> str:
        """The row's user message (`prompts.user_message`); the question itself (one text, not two copies: a million
        rows, ~10 % of their memory) when the template adds nothing."""
        if self.affixes is not None:  # the template around the question: no copy of the row to format
            before, after = self.affixes
            text = before + question + after if before or after else question
            return f"{text}\n{self.instruction}" if self.instruction and not mcq else text
        try:
            return user_message(self.cfg, row, question, mcq)
        except KeyError as err:
            raise RowError("prompt", f"template names column {err} which this row lacks") from None


def sample_from_row(
    cfg: DatasetConfig, path: str, fmt: str, lineno: int, row: dict[str, Any], resolve: MediaResolver
) -> Sample:
    """One row's Sample (`RowReader`, for a row on its own)."""
    return RowReader(cfg, path, fmt, resolve)(lineno, row)


def _vlmeval_image_links(rows: list[Row], column: str) -> None:
    """Replace VLMEvalKit image back-references (a short index) by the referenced row's image."""
    by_index = {str(r.get("index")): r.get(column) for _, r in rows if isinstance(r, dict)}
    for _, r in rows:
        if isinstance(r, dict):
            v = r.get(column)
            if isinstance(v, str) and len(v) <= 64 and v in by_index and by_index[v] != v:
                r[column] = by_index[v]


def file_samples(cfg: DatasetConfig) -> list[Sample]:
    assert cfg.path is not None
    path = Path(cfg.path)
    if not path.is_file():
        raise DatasetError(f"dataset {cfg.name!r}: file not found: {path}")
    src = str(path)
    samples = []
    try:
        fmt = detect_format(path, cfg.format)
        rows: Iterable[Row] = FORMATS[fmt](path)  # row by row: a million raw rows are not held beside their samples
        if fmt == "vlmeval" and cfg.fields.image:
            rows = list(rows)
            _vlmeval_image_links(rows, cfg.fields.image)
        resolve = MediaResolver(Path(cfg.image_root) if cfg.image_root else path.parent, base64_only=fmt == "vlmeval",
                                absolute=cfg.absolute_images)
        read = RowReader(cfg, src, fmt, resolve)
        for lineno, row in rows:
            if isinstance(row, Exception):
                samples.append(Sample(cfg.name, f"line{lineno}", "", "", source=f"{path}:{lineno}",
                                      error=f"{path}:{lineno}:{row}"))
            else:
                samples.append(read(lineno, row))
    except UnicodeDecodeError:
        raise DatasetError(f"dataset {cfg.name!r}: {not_utf8(path, 'file')}") from None
    except (OSError, csv.Error) as err:
        raise DatasetError(f"dataset {cfg.name!r}: cannot read {path}: {err}") from None
    if not samples:
        raise DatasetError(f"dataset {cfg.name!r}: {path} holds no samples (an empty file, or a header alone); "
                           "check that it is the file you meant")
    return samples


def media_problems(cfg: DatasetConfig) -> list[str]:
    """A file dataset's columns that hold pictures or video its `fields` do not read (`media.unmapped_media`), each
    with the setting that fixes it: such rows would run as text-only prompts, in silence. [] where the file cannot
    be read (its own error says so)."""
    if cfg.path is None or not Path(cfg.path).is_file():
        return []
    path = Path(cfg.path)
    try:
        head = list(islice(_rows(cfg, head=True), HEAD_ROWS))
    except UNREADABLE:
        return []
    f = cfg.fields
    mapped = {c for c in (f.id, f.question, f.answer, f.image, f.video) if c}
    root = Path(cfg.image_root) if cfg.image_root else path.parent
    image_read = bool(f.image) and any(isinstance(r, dict) and r.get(f.image) not in (None, "") for _, r in head)
    out = []
    for m in unmapped_media(head, mapped, set(cfg.columns), root):
        what = "video" if m.kind == "video" else "pictures"
        where = (f"dataset {cfg.name} ({path}): column `{m.column}` holds {what}"
                 f" (from line {m.first}, in {m.rows} of the first {min(len(head), HEAD_ROWS)} rows) that no setting "
                 "reads: the model would answer those rows without them")
        if m.kind == "video" and f.video and any(isinstance(r, dict) and r.get(f.video) not in (None, "")
                                                 for _, r in head):
            fix = (f"a row's video comes from one column (`fields.video: {f.video}`); list `{m.column}` in "
                   "`columns:` to run without it")
        elif m.kind == "video":
            fix = (f"set `fields.video: {m.column}` (a video file or a folder of its frames), or list it in "
                   "`columns:` to run without it")
        elif image_read:
            fix = (f"a row's pictures come from one column (`fields.image: {f.image}`): put them in one list column, "
                   f"or list `{m.column}` in `columns:` to run without them")
        else:
            fix = (f"set `fields.image: {m.column}` (a path, bytes, base64 or a list of them), or list it in "
                   "`columns:` to run without them")
        out.append(f"{where}; {fix}")
    return out


def dataset_columns(cfg: DatasetConfig) -> list[str]:
    """The columns of a file dataset's first row that parses (for messages about field names); [] otherwise."""
    if cfg.path is None or not Path(cfg.path).is_file():
        return []
    try:
        return next((list(row) for _, row in _rows(cfg) if isinstance(row, dict)), [])
    except UNREADABLE:
        return []


def _rows(cfg: DatasetConfig, head: bool = False) -> Iterator[Row]:
    """A file dataset's rows, lazily; `head`: a parquet file's first `HEAD_ROWS` only (not the whole table)."""
    path = Path(str(cfg.path))
    fmt = detect_format(path, cfg.format)
    return parquet_head(path) if head and fmt == "parquet" else FORMATS[fmt](path)


def easy_vqa_samples(cfg: DatasetConfig) -> list[Sample]:
    """The built-in easy-vqa dataset (`builtin: easy-vqa`), from the `easy_vqa` package's files."""
    try:
        import easy_vqa
    except ImportError:
        raise DatasetError("builtin dataset easy-vqa needs the package: pip install easy-vqa") from None
    if cfg.split not in ("train", "test"):
        raise DatasetError(f"dataset {cfg.name!r}: easy-vqa has splits 'train' and 'test', not {cfg.split!r}")
    get_q = easy_vqa.get_test_questions if cfg.split == "test" else easy_vqa.get_train_questions
    get_paths = easy_vqa.get_test_image_paths if cfg.split == "test" else easy_vqa.get_train_image_paths
    texts, answers, image_ids = get_q()
    paths = get_paths()
    return [
        Sample(
            dataset=cfg.name,
            id=f"{cfg.split}-{i}",
            question=q,
            prompt=user_message(cfg, {}, q, mcq=False),
            answers=[a],
            images=[ImageRef(f"easy-vqa:{cfg.split}:{i}:image", path=paths[img])],
            source=f"easy-vqa:{cfg.split}:{i}",
        )
        for i, (q, a, img) in enumerate(zip(texts, answers, image_ids))
    ]
