"""Scoring: per-sample scores computed once and stored (`record`), metric plug-ins, per-dataset summaries."""

from evalfleet.scoring.metrics import METRICS, Metric, is_closed_question, metric
from evalfleet.scoring.record import pass_mark, score_output, scoring_key, stage_scorer, unpack
from evalfleet.scoring.summary import summarize, summarize_groups

__all__ = ["METRICS", "Metric", "is_closed_question", "metric", "pass_mark", "score_output", "scoring_key",
           "stage_scorer", "summarize", "summarize_groups", "unpack"]
