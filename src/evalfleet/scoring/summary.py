"""Per-dataset summaries: each metric's mean over scored samples, split into closed and open questions."""

from __future__ import annotations

from statistics import fmean
from typing import Any

from evalfleet.scoring.extract import default_steps, extract
from evalfleet.scoring.metrics import METRICS, is_closed_question


def score_sample(prediction: str, answers: list[str], metrics: list[str], steps: list[str] | None,
                 options: dict[str, str] | None) -> tuple[str | None, str, dict[str, float]]:
    """(extracted answer, the step that found it or `fallback`/`unmatched`, {metric: score}) of one reply.

    `steps` None: the defaults for the sample (multiple choice or not). An unmatched reply scores 0.
    """
    extracted, how = extract(prediction, steps or default_steps(options), options)
    scores = {m: METRICS[m](extracted, answers) if extracted is not None else 0.0 for m in metrics}
    return extracted, how, scores


def score_rows(rows: list[dict[str, Any]], metrics: list[str], steps: list[str] | None = None) -> None:
    """Add `extracted`, `extraction` and `scores` {metric: value} to each finished row without error (None for
    the others), the reply's answer taken out by `steps` (`score_sample`)."""
    for row in rows:
        if row["finished"] and row["error"] is None and row["prediction"] is not None:
            row["extracted"], row["extraction"], row["scores"] = score_sample(
                row["prediction"], row["answers"], metrics, steps, row.get("metadata", {}).get("options"))
        else:
            row["extracted"] = row["extraction"] = row["scores"] = None


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
            "closed": fmean(closed) if closed else None,
            "open": fmean(opened) if opened else None,
            "n_closed": len(closed),
            "n_open": len(opened),
        }
    return out
