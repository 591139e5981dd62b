"""Issue 22, item 3: the metrics of medical VQA papers, each checked against a reference implementation."""

from __future__ import annotations

import sys
from collections import defaultdict

import pytest
from nltk.translate.bleu_score import sentence_bleu

from evalfleet.config.schema import BUILTIN_METRICS
from evalfleet.scoring import METRICS, score_output
from evalfleet.scoring.metrics import normalize
from evalfleet.scoring.summary import question_kind, summarize


def llava_med_f1(candidate: str, reference: str) -> tuple[float, float, float]:
    """LLaVA-Med's `calculate_f1score` (microsoft/LLaVA-Med @ b9a98a7, llava/eval/eval_metrics/
    evaluate_metrics.py), as written there, on whitespace tokens: returns (f1, precision, recall)."""
    candidate_words, reference_words = defaultdict(int), defaultdict(int)
    for w in candidate.split():
        candidate_words[w] += 1
    for w in reference.split():
        reference_words[w] += 1
    tp = fp = fn = 0
    for word in set(list(candidate_words) + list(reference_words)):
        if word in candidate_words and word in reference_words:
            tp += candidate_words[word]
        elif word in candidate_words and word not in reference_words:
            fp += candidate_words[word]
        elif word not in candidate_words and word in reference_words:
            fn += reference_words[word]
    if len(candidate_words) == 0 or len(reference_words) == 0:
        return 0, 0, 0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    if tp == 0:
        return 0, 0, 0
    return 2 * precision * recall / (precision + recall), precision, recall


CASES = [  # (prediction, reference): no repeated words, where LLaVA-Med counts a word's every occurrence
    ("The left lung.", "left lung"),
    ("There is a mass in the right upper lobe", "right upper lobe"),
    ("ct", "mri"),
    ("Axial plane, with contrast", "axial"),
    ("brain", "brain tissue"),
    ("yes", "yes"),
]


@pytest.mark.parametrize(("prediction", "reference"), CASES)
def test_token_recall_and_f1_equal_llava_meds(prediction, reference):
    f1, _, recall = llava_med_f1(normalize(prediction), normalize(reference))
    assert METRICS["token_recall"](prediction, [reference]) == pytest.approx(recall)
    assert METRICS["token_f1"](prediction, [reference]) == pytest.approx(f1)


@pytest.mark.parametrize(("prediction", "reference"), CASES + [("lung lung", "left lung"), ("", "lung")])
def test_bleu1_equals_nltk_sentence_bleu_with_unigram_weights(prediction, reference):
    hypothesis, references = normalize(prediction).split(), [normalize(reference).split()]
    expected = sentence_bleu(references, hypothesis, weights=(1, 0, 0, 0)) if hypothesis else 0.0
    assert METRICS["bleu1"](prediction, [reference]) == pytest.approx(expected)


def test_the_best_accepted_answer_counts_and_every_builtin_is_registered():
    assert METRICS["token_recall"]("left lung", ["right lung", "left lung"]) == 1.0
    assert set(BUILTIN_METRICS) == set(METRICS)


def test_closed_open_and_multiple_choice_come_apart_by_the_datasets_answer_type():
    rows = [
        {"answers": ["Heart"], "metadata": {"answer_type": "CLOSED"}},  # SLAKE: "heart or lung?" is closed
        {"answers": ["yes"], "metadata": {}},  # no answer type: yes/no is closed
        {"answers": ["left lung"], "metadata": {"answer_type": "OPEN"}},
        {"answers": ["B"], "metadata": {"options": {"A": "CT", "B": "MRI"}}},
    ]
    assert [question_kind(r) for r in rows] == ["closed", "closed", "open", "mcq"]
    for r, pred in zip(rows, ["Heart", "no", "the left lung", "B"]):
        r.update(finished=True, error=None, score=score_output(pred, r["answers"], metrics=["exact_match"],
                                                             options=r["metadata"].get("options")))
    s = summarize(rows, ["exact_match"])["exact_match"]
    assert (s["closed"], s["open"], s["mcq"], s["n_closed"], s["n_open"], s["n_mcq"]) == (0.5, 1.0, 1.0, 2, 1, 1)


def test_a_metric_plug_in_is_a_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "def mentions(prediction, answers):\n    return float(any(a.lower() in prediction.lower() for a in answers))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    s = score_output("It is the LIVER.", ["liver"], metrics=["my_metrics:mentions", "exact_match"])
    assert s.metrics == {"my_metrics:mentions": 1.0, "exact_match": 0.0}
    sys.modules.pop("my_metrics", None)
    with pytest.raises(ValueError, match="metric 'my_metrics:nope': cannot import it"):
        score_output("x", ["y"], metrics=["my_metrics:nope"])


# Issue 38, item 7: Chinese answers (SLAKE's `lang: zh`) are tokenised by character, as CMRC 2018's F1 does;
# the expected values are worked by hand. "肝脏和肾脏" is 5 tokens 肝 脏 和 肾 脏; "肝脏" is 2.
CJK_CASES = [  # (prediction, reference, token_recall, token_f1, bleu1)
    # shared 肝 脏 = 2; recall 2/2; precision 2/5; F1 2(.4)(1)/1.4 = 4/7; BLEU-1 2/5 (no brevity penalty)
    ("肝脏和肾脏", "肝脏", 1.0, 4 / 7, 0.4),
    # recall 2/5, precision 1, F1 4/7; BLEU-1 (2/2) exp(1 - 5/2)
    ("肝脏", "肝脏和肾脏", 0.4, 4 / 7, 0.22313016014842982),
    # Chinese punctuation is dropped, as ASCII's is
    ("肝脏。", "肝脏", 1.0, 1.0, 1.0),
    # mixed: ct 扫 描 显 示 肝 脏 (7 tokens) against ct: recall 1, precision 1/7, F1 2/8 = 0.25; BLEU-1 1/7
    ("CT扫描显示肝脏", "CT", 1.0, 0.25, 1 / 7),
    # mixed with spaces and a comma: 左 肺 left lung (4) against 左 肺 (2): recall 1, precision 1/2, F1 2/3
    ("左肺, left lung", "左肺", 1.0, 2 / 3, 0.5),
    # 肾 脏 脏 against 右 肾: only 肾 shared: recall 1/2, precision 1/3, F1 (1/3)/(5/6) = 0.4; BLEU-1 1/3
    ("肾脏脏", "右肾", 0.5, 0.4, 1 / 3),
]


@pytest.mark.parametrize(("prediction", "reference", "recall", "f1", "bleu"), CJK_CASES)
def test_chinese_is_tokenised_by_character(prediction, reference, recall, f1, bleu):
    assert METRICS["token_recall"](prediction, [reference]) == pytest.approx(recall)
    assert METRICS["token_f1"](prediction, [reference]) == pytest.approx(f1)
    assert METRICS["bleu1"](prediction, [reference]) == pytest.approx(bleu)
