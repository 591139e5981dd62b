"""Prompt templates per dataset: system prompt, instruction, few-shot examples; the exact prompt in the store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_config, quiet_console

from evalfleet.backends import Request
from evalfleet.config import DatasetConfig, parse_config
from evalfleet.data.datasets import DatasetError
from evalfleet.data.load import load_samples
from evalfleet.errors import UserError

SHOTS = [{"question": "What is 1 + 1?", "answer": "2"}, {"question": "Capital of Poland?", "answer": "Warsaw"}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_system_prompt_instruction_and_few_shot_turns(tmp_path):
    data = _write(tmp_path / "q.jsonl", [{"id": "a", "question": "What is 2 + 3?", "answer": "5"}])
    cfg = DatasetConfig(name="q", path=str(data), prompt="Q: {question}", instruction="Answer with a number.",
                        system_prompt="Be brief.", few_shot={"examples": SHOTS, "n": 1})
    [s] = load_samples(cfg, seed=0)
    assert s.prompt == "Q: What is 2 + 3?\nAnswer with a number."
    assert s.context == [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Q: What is 1 + 1?\nAnswer with a number."},
                         {"role": "assistant", "content": "2"}]
    # The dataset's system prompt wins over the model's; without one, the model's is used.
    req = Request(s.prompt, [], 0, context=s.context)
    assert req.messages("Model system.", s.prompt)[0]["content"] == "Be brief."
    assert Request("hi", [], 0).messages("Model system.", "hi") == [
        {"role": "system", "content": "Model system."}, {"role": "user", "content": "hi"}]
    # Models without a chat template get the lm-evaluation-harness plain layout.
    assert req.plain_text(None) == ("Be brief.\n\nQ: What is 1 + 1?\nAnswer with a number. 2\n\n"
                                    "Q: What is 2 + 3?\nAnswer with a number.")

    inline = DatasetConfig(name="q", path=str(data), few_shot={"examples": SHOTS, "multiturn": False})
    [s] = load_samples(inline, seed=0)
    assert s.context == []
    assert s.prompt == "What is 1 + 1? 2\n\nCapital of Poland? Warsaw\n\nWhat is 2 + 3?"


def test_mcq_instruction_replaces_the_default_line_and_examples_come_from_a_file(tmp_path):
    head = "index\tquestion\tA\tB\tanswer\n"
    (tmp_path / "mcq.tsv").write_text(head + "0\tSky colour?\tblue\tgreen\tA\n")
    (tmp_path / "shots.tsv").write_text(head + "7\tGrass colour?\tred\tgreen\tB\n8\tSnow colour?\twhite\tblack\tA\n")
    cfg = parse_config({"name": "r", "model": {"path": "m"}, "datasets": [{
        "name": "m", "path": "mcq.tsv", "instruction": "Answer with the letter.",
        "few_shot": {"path": "shots.tsv", "n": 1}}]}, base_dir=tmp_path).datasets[0]
    [s] = load_samples(cfg, seed=0)
    assert s.prompt == "Question: Sky colour?\nOptions:\nA. blue\nB. green\nAnswer with the letter."
    assert s.context == [{"role": "user", "content": "Question: Grass colour?\nOptions:\nA. red\nB. green\n"
                                                     "Answer with the letter."},
                         {"role": "assistant", "content": "B"}]


def test_bad_few_shot_examples_name_the_file_row_and_field(tmp_path):
    data = _write(tmp_path / "q.jsonl", [{"question": "x", "answer": "y"}])
    shots = _write(tmp_path / "shots.jsonl", [{"question": "a", "answer": "b"}, {"question": "c"}])
    with pytest.raises(DatasetError, match=r"shots.jsonl:2:answer: missing answer"):
        load_samples(DatasetConfig(name="q", path=str(data), few_shot={"path": str(shots)}), seed=0)
    with pytest.raises(DatasetError, match=r"few_shot.examples:1:question: missing question"):
        load_samples(DatasetConfig(name="q", path=str(data), few_shot={"examples": [{"answer": "b"}]}), seed=0)
    with pytest.raises(DatasetError, match="few_shot.n is 3 but there are only 2"):
        load_samples(DatasetConfig(name="q", path=str(data), few_shot={"examples": SHOTS, "n": 3}), seed=0)
    with pytest.raises(UserError, match="exactly one of `path` or `examples`"):
        parse_config({"name": "r", "model": {"path": "m"},
                      "datasets": [{"name": "q", "path": "q.jsonl", "few_shot": {"n": 2}}]})


def test_exact_prompt_is_stored_shown_and_guards_resuming(tmp_path, smollm2):
    from evalfleet.run import run

    data = _write(tmp_path / "q.jsonl", [{"id": "a", "question": "What is 2 + 3?", "answer": "5"},
                                         {"id": "b", "question": "What is 4 + 4?", "answer": "8"}])
    dataset = {"name": "q", "path": str(data), "system_prompt": "Reply with digits.", "instruction": "Be brief.",
               "few_shot": {"examples": SHOTS}}
    cfg = make_config(tmp_path, smollm2, [dataset], model={"generation": {"max_new_tokens": 4}})
    run(cfg, console=quiet_console())
    run_dir = tmp_path / "t"
    [pred] = [json.loads(x) for x in (run_dir / "predictions" / "q.jsonl").read_text().splitlines()][:1]
    expected = ("<|im_start|>system\nReply with digits.<|im_end|>\n"
                "<|im_start|>user\nWhat is 1 + 1?\nBe brief.<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
                "<|im_start|>user\nCapital of Poland?\nBe brief.<|im_end|>\n<|im_start|>assistant\nWarsaw<|im_end|>\n"
                "<|im_start|>user\nWhat is 2 + 3?\nBe brief.<|im_end|>\n<|im_start|>assistant\n")
    assert pred["prompt"] == expected

    shown = subprocess.run([sys.executable, "-m", "evalfleet.cli", "show", str(run_dir), "q", "a"],
                           capture_output=True, text=True, check=True).stdout
    assert expected.strip() in shown and pred["prediction"].strip() in shown
    assert f"extracted: {pred['extracted']!r} ({pred['extraction']})" in shown  # as the predictions say
    missing = subprocess.run([sys.executable, "-m", "evalfleet.cli", "show", str(run_dir), "q", "zz"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no sample 'zz'" in missing.stdout

    # Resuming with other prompts would mix answers to two prompts: refused, nothing lost.
    changed = make_config(tmp_path, smollm2, [{**dataset, "instruction": "Be very brief."}],
                          model={"generation": {"max_new_tokens": 4}})
    with pytest.raises(UserError, match=r"dataset q: 2 answered samples .* --redo generate"):
        run(changed, console=quiet_console())
    again = run(cfg, console=quiet_console())  # the same prompts resume
    assert again["datasets"]["q"]["finished"] == 2


def test_a_template_around_the_question_gives_what_formatting_the_row_gives():
    from evalfleet.config import DatasetConfig
    from evalfleet.prompts import question_affixes, user_message

    row = {"question": "Why?", "context": "ctx", "a": "1"}
    for template, fast in [("{question}", True), ("Q: {question}\nA:", True), ("{{braces}} {question} {{x}}", True),
                           ("{question} Answer briefly.", True), ("{context} {question}", False),
                           ("{question!r}", False), ("{question:>10}", False), ("{question} {question}", False),
                           ("no question", False), ("{", False)]:
        affixes = question_affixes(template)
        assert (affixes is not None) == fast, template
        for instruction in (None, "Answer with one word."):
            if affixes is None:
                continue
            cfg = DatasetConfig(name="d", path="d.jsonl", prompt=template, instruction=instruction)
            made = affixes[0] + "Why?" + affixes[1] + (f"\n{instruction}" if instruction else "")
            assert made == user_message(cfg, row, "Why?", False), template
