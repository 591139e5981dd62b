"""Dataset files as rows: JSONL, CSV/TSV (and VLMEvalKit's TSV) and parquet read into `(line, mapping)` pairs, or
`(line, the reason)` where a row cannot be parsed; `data/datasets.py` makes Samples of them."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from evalfleet.data.media import HEAD_ROWS
from evalfleet.errors import UserError


class DatasetError(UserError):
    """The dataset cannot be loaded at all."""


class RowError(ValueError):
    """One row is malformed; the message names the field."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column


Row = tuple[int, dict[str, Any] | Exception]
"""(line or record number, row mapping or the reason it could not be parsed)."""


def jsonl_rows(path: Path) -> Iterator[Row]:
    """A JSONL file's objects. (orjson was tried: on a million rows kept as samples it was ~2 s slower than `json`.)"""
    decode = json.JSONDecoder().raw_decode  # what `json.loads` calls, without its two wrappers (~4 us a row)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            try:
                row, end = decode(text)
                ok = end == len(text)
            except json.JSONDecodeError:
                ok = False
            if not ok:  # `json.loads` says why, with the column in the line as written
                try:
                    row = json.loads(line.rstrip())
                except json.JSONDecodeError as err:
                    yield lineno, RowError("(line)", f"invalid JSON: {err.msg} at column {err.colno}")
                    continue
            yield lineno, row if isinstance(row, dict) else RowError("(line)", "expected a JSON object")


def delimited_rows(path: Path, delimiter: str) -> Iterator[Row]:
    csv.field_size_limit(sys.maxsize)  # VLMEvalKit TSVs hold base64 images in one field
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DatasetError(f"{path}: empty file, expected a header row")
        for cells in reader:
            lineno = reader.line_num
            if not cells:
                continue
            if len(cells) != len(header):
                yield lineno, RowError("(line)", f"expected {len(header)} fields, got {len(cells)}")
                continue
            yield lineno, dict(zip(header, cells))


PARQUET_BATCH = 65_536
"""Rows of a parquet file turned into dicts at a time."""


def parquet_rows(path: Path) -> Iterator[Row]:
    """A parquet file's rows, read in record batches: a million rows are never all held as dicts (nor as a table)."""
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
        i = 0
        while (batch := next(batches, None)) is not None:
            for row in batch.to_pylist():
                i += 1
                yield i, row
    except Exception as err:  # a damaged file (or one that is not parquet), found as it is read
        raise DatasetError(f"{path}: cannot read parquet ({err})") from None


FORMATS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "jsonl": jsonl_rows,
    "csv": lambda p: delimited_rows(p, ","),
    "tsv": lambda p: delimited_rows(p, "\t"),
    "vlmeval": lambda p: delimited_rows(p, "\t"),
    "parquet": parquet_rows,
}
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    fmt = EXTENSIONS.get(path.suffix.lower(), "")
    if not fmt:
        raise DatasetError(f"{path}: unknown file type {path.suffix!r}; set `format` to one of {sorted(FORMATS)}")
    if fmt == "tsv":
        with path.open(encoding="utf-8") as f:
            if "index" in f.readline().rstrip("\n").split("\t"):
                return "vlmeval"
    return fmt


def parquet_head(path: Path) -> Iterator[Row]:
    """A parquet file's first rows, without reading the whole table."""
    import pyarrow.parquet as pq

    try:
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=HEAD_ROWS), None)
    except Exception as err:
        raise DatasetError(f"{path}: cannot read parquet ({err})") from None
    yield from enumerate(batch.to_pylist() if batch is not None else [], 1)


UNREADABLE = (OSError, UnicodeDecodeError, csv.Error, DatasetError)
"""What reading a dataset file may raise; the helpers that only peek at its rows give up on these."""
