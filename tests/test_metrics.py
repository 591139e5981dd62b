import pytest
from conftest import score_now

from evalfleet.scoring import METRICS, is_closed_question, summarize


@pytest.mark.parametrize(
    ("metric", "prediction", "answers", "expected"),
    [
        ("exact_match", "The Circle.", ["circle"], 1.0),
        ("exact_match", "a red circle", ["circle"], 0.0),
        ("exact_match", "Two", ["2"], 1.0),
        ("vqa_accuracy", "yes", ["yes", "yes", "no", "yes"], 1.0),
        ("vqa_accuracy", "no", ["yes", "yes", "no", "yes"], pytest.approx(1 / 3)),
        ("vqa_accuracy", "blue", ["blue"], 1.0),
        ("lenient_match", "7 + 9 = 16", ["16"], 1.0),
        ("lenient_match", "16 - 7 = 9", ["16"], 0.0),
        ("lenient_match", "The answer is 1,000.", ["1000"], 1.0),
        ("lenient_match", "The capital of France is Paris.", ["Paris"], 1.0),
        ("lenient_match", "Parisian food", ["Paris"], 0.0),
        ("lenient_match", "", ["Paris"], 0.0),
        ("lenient_match", "12 + 7 = 9\n\nOr 19.", ["19"], 0.0),
    ],
)
def test_metric_values(metric, prediction, answers, expected):
    assert METRICS[metric](prediction, answers) == expected


def test_closed_and_open_split():
    assert is_closed_question(["Yes"]) and not is_closed_question(["circle"]) and not is_closed_question([])
    rows = [
        {"finished": True, "error": None, "prediction": "yes", "answers": ["yes"]},
        {"finished": True, "error": None, "prediction": "circle", "answers": ["square"]},
        {"finished": True, "error": "bad image", "prediction": None, "answers": ["no"]},
        {"finished": False, "error": None, "prediction": None, "answers": ["x"]},
    ]
    score_now(rows, ["exact_match"])
    s = summarize(rows, ["exact_match"])
    assert (s["samples"], s["finished"], s["errors"], s["scored"]) == (4, 3, 1, 2)
    ci = s["exact_match"].pop("ci95")
    assert s["exact_match"] == {"all": 0.5, "closed": 1.0, "open": 0.0, "mcq": None, "n_closed": 1, "n_open": 1,
                                "n_mcq": 0}
    assert ci == pytest.approx([0.0945, 0.9055], abs=1e-4)  # Wilson, 1 of 2


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (44, 44), (31, 44), (500, 1000)])
def test_the_95_interval_of_a_0_1_metric_is_scipys_wilson_interval(k, n):
    from scipy.stats import binomtest

    from evalfleet.scoring.summary import interval95

    reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert interval95([1.0] * k + [0.0] * (n - k)) == pytest.approx([reference.low, reference.high], abs=1e-6)


def test_the_95_interval_of_a_graded_metric_is_the_normal_one_within_its_range():
    from statistics import fmean, stdev

    from evalfleet.scoring.summary import interval95

    values = [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 0.6, 0.3]
    half = 1.959964 * stdev(values) / len(values) ** 0.5
    assert interval95(values) == pytest.approx([fmean(values) - half, fmean(values) + half])
    assert interval95([1.0, 1.0, 0.9])[1] == 1.0 and interval95([]) is None

