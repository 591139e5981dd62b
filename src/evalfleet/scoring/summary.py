"""Per-dataset summaries: each metric's mean over scored samples with its 95 % interval, split into closed, open
and multiple-choice questions. They read the rows of the store (`Store.rows`) and their stored scores."""

from __future__ import annotations

import math
from statistics import fmean, stdev
from typing import Any

from evalfleet.scoring.metrics import is_closed_question
from evalfleet.scoring.score import AnswerScore

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


def answer_score(row: dict[str, Any]) -> AnswerScore | None:
    """A generate stage's row's stored score; None for a sample not answered, failed or not scored."""
    score = row.get("score")
    return score if isinstance(score, AnswerScore) and row["finished"] and row["error"] is None else None


def metric_values(row: dict[str, Any]) -> dict[str, float] | None:
    """A generate stage's row's metrics, {name: value}; None unless it was answered and scored (not truncated)."""
    return score.metrics if (score := answer_score(row)) is not None else None


def summarize(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """Counts and metric means of one dataset's rows, from their stored scores."""
    how = [score.extraction if (score := answer_score(r)) is not None else None for r in rows]
    scored = [(r, values) for r in rows if (values := metric_values(r)) is not None]
    out: dict[str, Any] = {
        "samples": len(rows),
        "finished": sum(r["finished"] for r in rows),
        "errors": sum(r["error"] is not None for r in rows),
        "scored": len(scored),
        "unmatched": how.count("unmatched"),
        "truncated": how.count("truncated"),
    }
    kinds = [question_kind(r) for r, _ in scored]
    for name in metrics:
        values = [v[name] for _, v in scored]
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


def group_rows(rows: list[dict[str, Any]], column: str) -> dict[str, list[dict[str, Any]]]:
    """The rows by their value of a `group_by` column, in the values' order; none at all where no row has the column
    (a dataset without it, such as VQA-RAD beside SLAKE's `modality`, gets no lone `-` group)."""
    by_value: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_value.setdefault(group_value(r, column), []).append(r)
    return {} if set(by_value) <= {"-"} else dict(sorted(by_value.items()))


def summarize_groups(rows: list[dict[str, Any]], metrics: list[str], group_by: list[str]
                     ) -> dict[str, dict[str, dict[str, Any]]]:
    """{column: {value: summary of the rows with that value}} for each `group_by` column the rows have."""
    return {column: {value: summarize(group, metrics) for value, group in groups.items()}
            for column in group_by if (groups := group_rows(rows, column))}
