import pytest

from evalfleet.config import JudgeParse
from evalfleet.records import Sample
from evalfleet.scoring.judge import parse_judgement, render_judge_prompt


@pytest.mark.parametrize(
    ("reply", "parse", "score", "error"),
    [
        ("I would rate it 8/10.", JudgeParse(), 8.0, None),
        ("<think>maybe 42</think>Score: 7", JudgeParse(), 7.0, None),
        ("Rating: 12 out of 10, then 3", JudgeParse(), None, "score 12 outside [0, 10]"),
        ("Excellent answer!", JudgeParse(), None, "no number in the reply"),
        ('Here: {"score": 4.5, "reason": "partly right"}', JudgeParse(kind="json"), 4.5, None),
        ('{"score": 11}', JudgeParse(kind="json"), None, "score 11 outside [0, 10]"),
        ("score is four", JudgeParse(kind="json"), None, "no JSON object with a numeric `score` in the reply"),
        ("The answer is incorrect.", JudgeParse(kind="label", labels={"correct": 1, "incorrect": 0}), 0.0, None),
        ("Correct, not incorrect", JudgeParse(kind="label", labels={"correct": 1, "incorrect": 0}), 1.0, None),
        ("Unsure", JudgeParse(kind="label", labels={"correct": 1, "incorrect": 0}), None,
         "none of the labels ['correct', 'incorrect'] in the reply"),
    ],
)
def test_replies_become_scores_or_recorded_parse_errors(reply, parse, score, error):
    j = parse_judgement(reply, parse)
    assert (j.score, j.error) == (score, error)


def test_json_reason_is_kept_and_prompt_renders_sample_fields():
    assert parse_judgement('{"score": 2, "reason": "wrong city"}', JudgeParse(kind="json")).reason == "wrong city"
    sample = Sample("d", "q1", "Capital of France?", "Capital of France?", ["Paris", "paris"])
    text = render_judge_prompt("{image}Q: {question} Ref: {answer} A: {prediction} ({id})", sample, "Lyon")
    assert text == "Q: Capital of France? Ref: Paris / paris A: Lyon (q1)"
    with pytest.raises(KeyError, match="colour"):
        render_judge_prompt("{colour}", sample, "Lyon")
