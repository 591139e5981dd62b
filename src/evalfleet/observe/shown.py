"""`--show-samples`: a line per answered sample with its score (as the driver stored it), then the batch's mean."""

from __future__ import annotations

from statistics import fmean

from evalfleet.observe.progress import RunProgress
from evalfleet.records import Result


def show_results(progress: RunProgress, kind: str, metric: str, worker: str, results: list[Result]) -> None:
    """Each result's score (a judge's parsed score, or the run's first metric), then the batch's mean."""
    values = []
    for r in results:
        text = (r.output or "").replace("\n", " ")[:100]
        if r.error is not None:
            line = f"error | {r.error[:100]}"
        elif r.score is None:
            line = f"(not scored) | {text}"
        elif kind == "judge":
            score = r.score.score
            line = f"score {score:.2f} | {text}" if score is not None else f"unparsed ({r.score.error}) | {text}"
            values += [score] if score is not None else []
        elif r.score.metrics is None:
            line = f"(truncated, not scored) | {text}"
        else:
            value = r.score.metrics[metric]
            line = f"{metric} {value:.2f} | {text}"
            values.append(value)
        progress.note(f"[{worker}] [{r.dataset}/{r.sample_id}] {line}")
    if values:
        progress.note(f"[{worker}] batch of {len(results)}: mean {fmean(values):.2f} over {len(values)}")
