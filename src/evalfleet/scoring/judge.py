"""Judge stages: the prompt a judge sees, and its reply turned into a score (or a recorded parse error)."""

from __future__ import annotations

import json
import re

from evalfleet.config import JudgeParse
from evalfleet.records import Sample
from evalfleet.scoring.score import JudgeScore

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def render_judge_prompt(template: str, sample: Sample, prediction: str) -> str:
    """Fill a judge template from the answered sample (question, answers, id) and its `prediction`.

    `{answer}` is the accepted answers joined by " / "; `{image}` marks where the sample's images go
    and renders as nothing (the chat template places them). Raises KeyError naming an unknown field.
    """
    fields = {"question": sample.question, "prediction": prediction, "id": sample.id,
              "answer": " / ".join(sample.answers), "image": "", "edited_image": ""}
    return template.format_map(fields)


def parse_judgement(reply: str, parse: JudgeParse) -> JudgeScore:
    """Read a score from a judge reply as `parse` says; never a silent 0."""
    text = _THINK.sub("", reply).strip()
    if parse.kind == "json":
        start, end = text.find("{"), text.rfind("}")
        try:
            obj = json.loads(text[start : end + 1]) if start >= 0 < end else None
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("score"), (int, float)):
            return JudgeScore(None, error="no JSON object with a numeric `score` in the reply")
        score, reason = float(obj["score"]), obj.get("reason")
        if not parse.min <= score <= parse.max:
            return JudgeScore(None, error=f"score {score:g} outside [{parse.min:g}, {parse.max:g}]")
        return JudgeScore(score, str(reason) if reason is not None else None)
    if parse.kind == "label":
        assert parse.labels
        lowered = text.lower()
        found = [(m.start(), label) for label in parse.labels
                 for m in [re.search(rf"\b{re.escape(label.lower())}\b", lowered)] if m]
        if not found:
            return JudgeScore(None, error=f"none of the labels {sorted(parse.labels)} in the reply")
        label = min(found)[1]  # the label named first
        return JudgeScore(parse.labels[label], text)
    match = _NUMBER.search(text)  # the first number is the score ("8/10", "Score: 7 because ...")
    if match is None:
        return JudgeScore(None, error="no number in the reply")
    value = float(match.group())
    if not parse.min <= value <= parse.max:
        return JudgeScore(None, error=f"score {value:g} outside [{parse.min:g}, {parse.max:g}]")
    return JudgeScore(value, text)
