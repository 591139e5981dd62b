"""Per-dataset summaries: each metric's mean over scored samples, split into closed and open questions."""

from __future__ import annotations

from statistics import fmean
from typing import Any

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
            "closed": fmean(closed) if closed else None,
            "open": fmean(opened) if opened else None,
            "n_closed": len(closed),
            "n_open": len(opened),
        }
    return out
