"""One sample's score, computed once, where its result is committed, and stored with it: every view (reports,
compare, the HTML report, `evalfleet show`, `--show-samples`) reads it from the store.

A `generate` stage's score is an `AnswerScore`: the answer extracted from the reply, how it was found, and each
metric; a judge stage's is a `JudgeScore`: its parsed score, reason and parse error (both in `scoring/score.py`);
an `edit` stage's outputs are images, scored by judges.
`scoring_key` names the settings a score depends on: when they change, stored scores are recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from evalfleet.config import JudgeParse, RunConfig, StageConfig
from evalfleet.scoring.extract import default_steps, extract
from evalfleet.scoring.judge import parse_judgement
from evalfleet.scoring.metrics import METRICS_VERSION, resolve_metric
from evalfleet.scoring.score import AnswerScore, Score


def score_output(output: str | None, answers: list[str], *, kind: str = "generate", metrics: list[str] = (),
                 steps: list[str] | None = None, options: dict[str, str] | None = None,
                 parse: JudgeParse | None = None) -> Score | None:
    """The score of one reply: for `generate`, an `AnswerScore` (an unmatched reply scores 0; `steps` None: the
    defaults for the sample, multiple choice or not); for `judge`, a `JudgeScore`; None for no reply or an `edit`
    stage."""
    if output is None or kind == "edit":
        return None
    if kind == "judge":
        return parse_judgement(output, parse or JudgeParse())
    extracted, how = extract(output, steps or default_steps(options), options)
    if how == "truncated":  # no answer yet: not scored (nor counted as wrong), counted apart
        return AnswerScore(None, how, None)
    values = {m: resolve_metric(m)(extracted, answers) if extracted is not None else 0.0 for m in metrics}
    return AnswerScore(extracted, how, values)


Scorer = Callable[[str, str | None, list[str], dict[str, Any]], Score | None]
"""`score(dataset, output, answers, sample metadata)`."""


def stage_scorer(stage: StageConfig, cfg: RunConfig) -> Scorer:
    """`score_output` for `stage` as `cfg` scores it."""
    steps = {d.name: d.extract for d in cfg.datasets}
    metrics = cfg.metrics if stage.kind == "generate" else []

    def score(dataset: str, output: str | None, answers: list[str], metadata: dict[str, Any]) -> Score | None:
        return score_output(output, answers, kind=stage.kind, metrics=metrics, steps=steps.get(dataset),
                            options=metadata.get("options"), parse=stage.parse)

    return score


def pass_mark(parse: JudgeParse | None = None) -> float:
    """The lowest score of a right answer: 0.5 for a metric, the middle of a judge's range."""
    return 0.5 if parse is None else (parse.min + parse.max) / 2


def scoring_key(stage: StageConfig, cfg: RunConfig) -> str:
    """What a stage's stored scores depend on: the metrics (and the built-ins' version) and each dataset's extraction
    steps, or the judge's parsing."""
    what: Any = stage.parse.model_dump() if stage.kind == "judge" else [
        cfg.metrics, {d.name: d.extract for d in cfg.datasets}, METRICS_VERSION]
    return hashlib.sha256(json.dumps([stage.kind, what], sort_keys=True).encode()).hexdigest()[:16]

