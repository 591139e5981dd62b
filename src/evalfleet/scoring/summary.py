"""Per-dataset summaries: each metric's mean over scored samples with its 95 % interval, split into closed and
open questions."""

from __future__ import annotations

import math
from statistics import fmean, stdev
from typing import Any

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

from evalfleet.scoring.metrics import is_closed_question


def summarize(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """Counts and metric means of one dataset's scored rows."""
    scored = [r for r in rows if r["scores"] is not None]
    out: dict[str, Any] = {
        "samples": len(rows),
        "finished": sum(r["finished"] for r in rows),
        "errors": sum(r["error"] is not None for r in rows),
        "scored": len(scored),
        "unmatched": sum(r.get("extraction") == "unmatched" for r in rows),
    }
    for name in metrics:
        closed = [r["scores"][name] for r in scored if is_closed_question(r["answers"])]
        opened = [r["scores"][name] for r in scored if not is_closed_question(r["answers"])]
        values = closed + opened
        out[name] = {
            "all": fmean(values) if values else None,
            "ci95": interval95(values),
            "closed": fmean(closed) if closed else None,
            "open": fmean(opened) if opened else None,
            "n_closed": len(closed),
            "n_open": len(opened),
        }
    return out
