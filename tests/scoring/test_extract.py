"""Answer extraction: each step, chains with fallback, multiple choice without guessing."""

import json

import pytest
from conftest import score_now

from evalfleet.config import parse_config
from evalfleet.errors import UserError
from evalfleet.scoring.extract import choice, extract

OPTIONS = {"A": "Berlin", "B": "Paris", "C": "Rome", "D": "Madrid"}


@pytest.mark.parametrize(("reply", "steps", "expected"), [
    ("<think>2+2 is 4, or is it 5?</think>The answer is 4.", ["strip_think", "answer_prefix"], ("4", "answer_prefix")),
    ("so 4 then.</think> 4", ["strip_think"], ("4", "fallback")),  # the opening tag was cut off
    ("Final answer: Paris\nBecause ...", ["answer_prefix"], ("Paris", "answer_prefix")),
    ("We get \\boxed{\\frac{1}{2}} at the end", ["boxed", "last_number"], ("\\frac{1}{2}", "boxed")),
    ("7 + 9 = 16", ["answer_prefix", "last_number"], ("16", "last_number")),
    ("It is a red circle.", ["last_word"], ("circle", "last_word")),
    ("Paris\nis the capital", ["first_line"], ("Paris", "fallback")),
    ("score=7/10", ["regex:score=(\\d+)"], ("7", "regex:score=(\\d+)")),
    ("no marker here", ["answer_prefix"], ("no marker here", "fallback")),
    ("The answer to this is long", ["answer_prefix"], ("The answer to this is long", "fallback")),
])
def test_extraction_steps(reply, steps, expected):
    assert extract(reply, steps) == expected


@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"), ("(B)", "B"), ("B. Paris", "B"), ("The answer is B.", "B"), ("**C**", "C"),
    ("It is Paris, of course.", "B"), ("Answer: D) Madrid", "D"),
    ("I don't know", None), ("A or B", None), ("Berlin or Rome", None),
])
def test_multiple_choice_maps_replies_to_letters_and_never_guesses(reply, letter):
    assert choice(reply, OPTIONS) == letter
    assert extract(reply, ["strip_think", "choice"], OPTIONS) == (
        (letter, "choice") if letter else (None, "unmatched"))


def test_scores_use_the_extracted_answer_and_count_unmatched_replies():
    rows = [{"finished": True, "error": None, "prediction": p, "answers": ["B"], "metadata": {"options": OPTIONS}}
            for p in ("The answer is (B).", "Rome", "no idea")]
    score_now(rows, ["exact_match"])
    assert [r["score"].extracted for r in rows] == ["B", "C", None]
    assert [r["score"].metrics["exact_match"] for r in rows] == [1.0, 0.0, 0.0]
    assert [r["score"].extraction for r in rows] == ["choice", "choice", "unmatched"]


def test_unknown_steps_and_bad_regexes_are_config_errors():
    base = {"name": "x", "model": {"path": "m"}}
    with pytest.raises(UserError, match="unknown extract step 'last_numbr'"):
        parse_config({**base, "datasets": [{"name": "d", "path": "d.jsonl", "extract": ["last_numbr"]}]})
    with pytest.raises(UserError, match="invalid regex"):
        parse_config({**base, "datasets": [{"name": "d", "path": "d.jsonl", "extract": ["regex:("]}]})


def test_mcq_tsv_end_to_end_keeps_reply_and_extracted_letter(tmp_path, smollm2):
    from conftest import quiet_console

    from evalfleet.run import run

    tsv = tmp_path / "mcq.tsv"
    rows = [("0", "What is the capital of France?", "Berlin", "Paris", "Rome", "Madrid", "B"),
            ("1", "How many legs does a spider have?", "6", "8", "10", "4", "B"),
            ("2", "What color is the sky on a clear day?", "Green", "Red", "Blue", "Black", "C")]
    tsv.write_text("index\tquestion\tA\tB\tC\tD\tanswer\n" + "".join("\t".join(r) + "\n" for r in rows))
    cfg = parse_config({"name": "mcq", "output_dir": str(tmp_path), "workers": 1, "judge_cache": None,
                        "model": {"path": str(smollm2), "dtype": "float32", "generation": {"max_new_tokens": 8}},
                        "datasets": [{"name": "m", "path": str(tsv)}], "metrics": ["exact_match"]})
    summary = run(cfg, console=quiet_console())
    preds = [json.loads(x) for x in (tmp_path / "mcq" / "predictions" / "m.jsonl").read_text().splitlines()]
    for p in preds:  # the raw reply and what was read from it, both kept
        assert p["prediction"] and p["extraction"] in ("choice", "unmatched")
        assert (p["extracted"] is None) == (p["extraction"] == "unmatched")
        assert p["score"]["exact_match"] == float(p["extracted"] == p["answer"])
    assert summary["datasets"]["m"]["unmatched"] == sum(p["extraction"] == "unmatched" for p in preds)

