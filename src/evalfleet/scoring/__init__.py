"""Scoring: per-sample metrics (plug-ins in a registry) and per-dataset summaries."""

from evalfleet.scoring.metrics import METRICS, Metric, is_closed_question, metric
from evalfleet.scoring.summary import score_rows, score_sample, summarize

__all__ = ["METRICS", "Metric", "is_closed_question", "metric", "score_rows", "score_sample", "summarize"]
