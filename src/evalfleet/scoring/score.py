"""A sample's score as a typed record: an `AnswerScore` for a generate stage's reply (the answer extracted, how,
and each metric), a `JudgeScore` for a judge's (its parsed score and reason, or why no score could be read).

The store keeps a score as JSON in the result's row: `to_json` writes it with its `kind`, `score_from_json` reads
it back, and also reads the untagged dicts that stores written before the score was typed hold (their keys tell
the kind), so that such a run resumes and reports as before. This module imports nothing of evalfleet: the store
and the records name it without pulling in the scoring functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AnswerScore:
    """A generate stage's score of one reply."""

    extracted: str | None
    """The answer found in the reply; None when none was (`unmatched`, scored 0) or the reply is `truncated`."""
    extraction: str
    """How it was found: the extraction step that found it, `fallback`, `unmatched`, or `truncated` (the reply
    ended inside its thinking: no answer yet, neither scored nor counted as wrong)."""
    metrics: dict[str, float] | None
    """Each metric's value, {name: value}; None when `truncated`."""

    def to_json(self) -> str:
        return json.dumps({"kind": "answer", "extracted": self.extracted, "extraction": self.extraction,
                           "metrics": self.metrics})


@dataclass(frozen=True)
class JudgeScore:
    """A judge stage's score of one reply: a score and reason, or why no score could be read (never a silent 0)."""

    score: float | None
    reason: str | None = None
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps({"kind": "judge", "score": self.score, "reason": self.reason, "error": self.error})


Score = AnswerScore | JudgeScore
"""One sample's score at one stage (an `edit` stage's outputs have none: judges score them)."""


def score_from_json(text: str | None) -> Score | None:
    """A score as `to_json` stored it; None for none. A score stored before scores were typed is a dict without
    `kind`: a judge's has `score`, an answer's `extracted`, `extraction` and `metrics`."""
    data: dict[str, Any] | None = json.loads(text) if text else None
    if data is None:
        return None
    kind = data.get("kind") or ("judge" if "score" in data else "answer")
    if kind == "judge":
        return JudgeScore(data["score"], data.get("reason"), data.get("error"))
    if kind == "answer":
        return AnswerScore(data["extracted"], data["extraction"], data["metrics"])
    raise ValueError(f"a stored score of unknown kind {kind!r}")
