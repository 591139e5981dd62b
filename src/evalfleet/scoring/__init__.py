"""Scoring: per-sample scores computed once and stored (`record`) as typed records (`score`), metric plug-ins,
per-dataset summaries."""

from evalfleet.scoring.metrics import METRICS, Metric, is_closed_question, metric
from evalfleet.scoring.record import pass_mark, score_output, scoring_key, stage_scorer
from evalfleet.scoring.score import AnswerScore, JudgeScore, Score, score_from_json
from evalfleet.scoring.summary import answer_score, metric_values, summarize, summarize_groups

__all__ = ["METRICS", "AnswerScore", "JudgeScore", "Metric", "Score", "answer_score", "is_closed_question", "metric",
           "metric_values", "pass_mark", "score_from_json", "score_output", "scoring_key", "stage_scorer",
           "summarize", "summarize_groups"]
