"""`--show-samples`: a line per answered sample with its score, then the batch's mean."""

from __future__ import annotations

from statistics import fmean

from evalfleet.config import RunConfig, StageConfig
from evalfleet.observe.progress import RunProgress
from evalfleet.records import Result, Sample
from evalfleet.scoring import score_sample
from evalfleet.scoring.judge import parse_judgement


def show_results(progress: RunProgress, cfg: RunConfig, stage: StageConfig, samples: dict[tuple[str, str], Sample],
                 worker: str, results: list[Result]) -> None:
    """Each result's score (a judge's parsed score, or the run's first metric), then the batch's mean."""
    values = []
    for r in results:
        text = (r.output or "").replace("\n", " ")[:100]
        if r.error is not None:
            line = f"error | {r.error[:100]}"
        elif stage.kind == "judge":
            j = parse_judgement(r.output or "", stage.parse)
            line = f"score {j.score:.2f} | {text}" if j.score is not None else f"unparsed ({j.error}) | {text}"
            values += [j.score] if j.score is not None else []
        else:
            metric, s = cfg.metrics[0], samples[(r.dataset, r.sample_id)]
            steps = next((d.extract for d in cfg.datasets if d.name == r.dataset), None)
            value = score_sample(r.output or "", s.answers, [metric], steps, s.metadata.get("options"))[2][metric]
            line = f"{metric} {value:.2f} | {text}"
            values.append(value)
        progress.note(f"[{worker}] [{r.dataset}/{r.sample_id}] {line}")
    if values:
        progress.note(f"[{worker}] batch of {len(results)}: mean {fmean(values):.2f} over {len(values)}")
