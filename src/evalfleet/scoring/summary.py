"""Per-dataset summaries: each metric's mean over scored samples with its 95 % interval, split into closed, open
and multiple-choice questions."""

from __future__ import annotations

import math
from statistics import fmean, stdev
from typing import Any

from evalfleet.scoring.metrics import is_closed_question

Z95 = 1.959964


def interval95(values: list[float]) -> list[float] | None:
    """95 % interval of the mean of `values`: Wilson's score interval for 0/1 scores (right also near 0 % and
    100 %, where the normal one is not), else the normal approximation, clamped to the scores' range."""
    n = len(values)
    if not n:
        return None
    mean = fmean(values)
    if all(v in (0, 1) for v in values):
        denom = 1 + Z95**2 / n
        centre = (mean + Z95**2 / (2 * n)) / denom
        half = Z95 * math.sqrt(mean * (1 - mean) / n + Z95**2 / (4 * n * n)) / denom
        return [max(0.0, centre - half), min(1.0, centre + half)]
    half = Z95 * stdev(values) / math.sqrt(n) if n > 1 else 0.0
    return [max(min(values), mean - half), min(max(values), mean + half)]


def summarize(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """Counts and metric means of one dataset's scored rows."""
    scored = [r for r in rows if r["scores"] is not None]
    out: dict[str, Any] = {
        "samples": len(rows),
        "finished": sum(r["finished"] for r in rows),
        "errors": sum(r["error"] is not None for r in rows),
        "scored": len(scored),
        "unmatched": sum(r.get("extraction") == "unmatched" for r in rows),
        "truncated": sum(r.get("extraction") == "truncated" for r in rows),
    }
    kinds = [question_kind(r) for r in scored]
    for name in metrics:
        values = [r["scores"][name] for r in scored]
        split = {k: [v for v, kind in zip(values, kinds) if kind == k] for k in QUESTION_KINDS}
        out[name] = {"all": fmean(values) if values else None, "ci95": interval95(values),
                     **{k: fmean(v) if v else None for k, v in split.items()},
                     **{f"n_{k}": len(v) for k, v in split.items()}}
    return out


QUESTION_KINDS = ("closed", "open", "mcq")


def question_kind(row: dict[str, Any]) -> str:
    """`mcq` for a sample with options; else `closed` or `open` as its dataset's answer type says (SLAKE,
    VQA-RAD: `answer_type` CLOSED / OPEN), or, without one, closed when every accepted answer is yes or no."""
    metadata = row.get("metadata") or {}
    if metadata.get("options"):
        return "mcq"
    declared = str(metadata.get("answer_type") or (metadata.get("columns") or {}).get("answer_type") or "").lower()
    if declared in ("closed", "open"):
        return declared
    return "closed" if is_closed_question(row["answers"]) else "open"


def group_value(row: dict[str, Any], column: str) -> str:
    """A row's value of a `group_by` column: its kept column, `-` where it has none; `answer_type` (and
    `question_kind`) is the question's kind, closed / open / mcq: the dataset's own answer type where it has one,
    else derived (`question_kind`), so that datasets with and without one group alike."""
    if column in ("question_kind", "answer_type"):
        return question_kind(row)
    value = ((row.get("metadata") or {}).get("columns") or {}).get(column)
    return "-" if value in (None, "") else str(value)


def summarize_groups(rows: list[dict[str, Any]], metrics: list[str], group_by: list[str]
                     ) -> dict[str, dict[str, dict[str, Any]]]:
    """{column: {value: summary of the rows with that value}} for each `group_by` column."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for column in group_by:
        by_value: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_value.setdefault(group_value(r, column), []).append(r)
        out[column] = {value: summarize(group, metrics) for value, group in sorted(by_value.items())}
    return out
