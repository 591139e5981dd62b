"""Parity with lm-evaluation-harness: the same model (SmolLM2), questions, chat-templated prompt (system prompt,
two few-shot examples as chat turns or inside the message, instruction), greedy decoding and token limit give
the same prompts, the same raw generations, the same extracted answers and the same accuracy in both tools."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import DEMO_QUESTIONS, quiet_console

from evalfleet.config import parse_config

SYSTEM = "You are a quiz contestant. Reply briefly."
INSTRUCTION = "Answer with one word or one number."
SHOTS = [{"question": "What is 1 + 1?", "answer": "2"},
         {"question": "What is the capital of Poland?", "answer": "Warsaw"}]
LAST_WORD = r"(?s).*\b(\w+)\b"
"""One extraction rule for both tools: the reply's last word (lm-eval's `regex` filter, evalfleet's `regex:`)."""
MAX_NEW_TOKENS = 24

TASK = f"""\
task: evalfleet_parity
dataset_path: json
dataset_kwargs:
  data_files:
    test: QUESTIONS
    train: SHOTS
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
output_type: generate_until
doc_to_text: "{{{{question}}}}\\n{INSTRUCTION}"
doc_to_target: answer
generation_kwargs:
  until: []
  do_sample: false
  max_gen_toks: {MAX_NEW_TOKENS}
filter_list:
  - name: last_word
    filter:
      - function: regex
        regex_pattern: '{LAST_WORD}'
      - function: take_first
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
"""


def _lm_eval(tmp_path: Path, model: Path, multiturn: bool) -> dict[str, dict]:
    """lm-eval's samples by question id: raw reply, filtered answer and exact match."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    shots = tmp_path / "shots.jsonl"
    shots.write_text("".join(json.dumps(s) + "\n" for s in SHOTS))
    tasks = tmp_path / "lm_eval_tasks"
    tasks.mkdir()
    (tasks / "parity.yaml").write_text(TASK.replace("QUESTIONS", str(DEMO_QUESTIONS)).replace("SHOTS", str(shots)))
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model},dtype=float32,device=cpu", tasks=["evalfleet_parity"],
        num_fewshot=len(SHOTS), apply_chat_template=True, fewshot_as_multiturn=multiturn, system_instruction=SYSTEM,
        batch_size=8, log_samples=True, task_manager=TaskManager(include_path=str(tasks)))
    return {s["doc"]["id"]: s for s in out["samples"]["evalfleet_parity"]}


@pytest.mark.parametrize("multiturn", [True, False], ids=["shots-as-turns", "shots-in-message"])
def test_generations_and_accuracy_match_lm_evaluation_harness(tmp_path, smollm2, multiturn):
    from evalfleet.run import run

    theirs = _lm_eval(tmp_path, smollm2, multiturn)
    cfg = parse_config({
        "name": "parity", "output_dir": str(tmp_path), "workers": 1, "judge_cache": None,
        "model": {"path": str(smollm2), "dtype": "float32", "batch_size": 8,
                  "generation": {"max_new_tokens": MAX_NEW_TOKENS}},
        "datasets": [{"name": "quiz", "path": str(DEMO_QUESTIONS), "instruction": INSTRUCTION, "system_prompt": SYSTEM,
                      "few_shot": {"examples": SHOTS, "multiturn": multiturn}, "extract": [f"regex:{LAST_WORD}"]}],
        "metrics": ["exact_match"]})
    summary = run(cfg, console=quiet_console())
    ours = {p["id"]: p for p in map(json.loads, (tmp_path / "parity" / "predictions" / "quiz.jsonl").open())}

    assert sorted(ours) == sorted(theirs) and len(ours) == 44
    for qid, p in ours.items():
        t = theirs[qid]
        assert p["prediction"] == t["resps"][0][0], qid  # raw generation, token for token
        assert p["extracted"] == t["filtered_resps"][0], qid
        assert p["score"]["exact_match"] == t["exact_match"], qid
        assert p["prompt"] == t["arguments"][0][0], qid  # the same chat-templated prompt
    accuracy = sum(t["exact_match"] for t in theirs.values()) / len(theirs)
    assert summary["datasets"]["quiz"]["exact_match"]["all"] == pytest.approx(accuracy)
    print(f"lm-eval and evalfleet: exact match {accuracy:.3f} on {len(theirs)} questions")
    assert 0 < accuracy < 1  # a comparison that could have failed either way
