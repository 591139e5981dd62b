"""Issue 22, item 4: thinking models' answers are scored without their thinking; an answer still thinking when
its token budget ran out is `truncated`, never scored, and counted."""

from __future__ import annotations

from evalfleet.scoring import AnswerScore, score_output, summarize


def scored(reply: str, answers: list[str], options: dict[str, str] | None = None) -> AnswerScore:
    return score_output(reply, answers, metrics=["exact_match"], options=options)


def test_qwen3_think_block_is_dropped_before_scoring():
    s = scored("<think>\nThe capital of France... it is Paris.\n</think>\n\nParis", ["Paris"])
    assert (s.extracted, s.metrics) == ("Paris", {"exact_match": 1.0})


def test_glm41v_thinking_answer_tags_and_box_markers():
    s = scored("<think>It looks like a lesion.</think><answer>yes</answer>", ["yes"])
    assert (s.extracted, s.metrics["exact_match"]) == ("yes", 1.0)
    mcq = scored("<think>A or B? B.</think><answer><|begin_of_box|>B<|end_of_box|></answer>", ["B"],
                 options={"A": "lung", "B": "liver"})
    assert (mcq.extracted, mcq.extraction, mcq.metrics["exact_match"]) == ("B", "choice", 1.0)


def test_an_answer_still_thinking_is_truncated_not_scored_and_counted():
    s = scored("<think>Let me look at the image carefully. The answer could be yes", ["yes"])
    assert s == AnswerScore(extracted=None, extraction="truncated", metrics=None)
    rows = [{"finished": True, "error": None, "answers": ["yes"], "score": s},
            {"finished": True, "error": None, "answers": ["no"], "score": scored("<think>x</think>no", ["no"])}]
    summary = summarize(rows, ["exact_match"])
    assert (summary["scored"], summary["truncated"], summary["exact_match"]["all"]) == (1, 1, 1.0)


def test_a_plain_reply_is_not_touched():
    s = scored("The answer is no.", ["no"])
    assert (s.extracted, s.extraction, s.metrics["exact_match"]) == ("no", "answer_prefix", 1.0)
