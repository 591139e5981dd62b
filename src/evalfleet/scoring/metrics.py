"""Per-sample metrics. Each maps (prediction, accepted answers) to a score in [0, 1]."""

from __future__ import annotations

import importlib
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Protocol

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])}
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


class Metric(Protocol):
    """A named per-sample scoring rule."""

    def __call__(self, prediction: str, answers: list[str]) -> float: ...


METRICS: dict[str, Metric] = {}


def metric(name: str) -> Callable[[Metric], Metric]:
    """Register a metric under `name` (the name used in configs)."""

    def register(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return register


def normalize(text: str) -> str:
    """Lowercase, number words to digits, no punctuation or articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(_NUMBER_WORDS.get(w, w) for w in text.split())


def is_closed_question(answers: list[str]) -> bool:
    """Closed (yes/no) when every accepted answer is yes or no."""
    return bool(answers) and all(normalize(a) in ("yes", "no") for a in answers)


@metric("exact_match")
def exact_match(prediction: str, answers: list[str]) -> float:
    """1 if the normalised prediction equals any normalised answer."""
    pred = normalize(prediction)
    return float(any(pred == normalize(a) for a in answers))


@metric("vqa_accuracy")
def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA soft accuracy: min(1, matching annotators / 3) with >= 3 answers, else exact match."""
    pred = normalize(prediction)
    matches = sum(pred == normalize(a) for a in answers)
    return min(1.0, matches / 3) if len(answers) >= 3 else float(matches > 0)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


@metric("lenient_match")
def lenient_match(prediction: str, answers: list[str]) -> float:
    """Fair to chatty models, judged on the first non-empty line of the prediction (the answer line):
    for a numeric answer its last number must equal it ("7 + 9 = 16" is right for 16, "16 - 7 = 9" is
    not); otherwise the normalised answer must appear as whole words in it ("The capital of France is
    Paris." is right for Paris).
    """
    prediction = next((line for line in prediction.splitlines() if line.strip()), "")
    pred = normalize(prediction)
    for answer in answers:
        target = _number(answer.strip())
        if target is not None:
            numbers = _NUMBER.findall(prediction.replace(",", ""))
            if numbers and _number(numbers[-1]) == target:
                return 1.0
        elif normalize(answer) and f" {normalize(answer)} " in f" {pred} ":
            return 1.0
    return 0.0


# Medical VQA (PathVQA, SLAKE, VQA-RAD papers: LLaVA-Med, MedEvalKit). Tokens are the words of `normalize`
# (lower case, punctuation and articles dropped); the best accepted answer counts.
def _tokens(text: str) -> list[str]:
    return normalize(text).split()


def _overlap(prediction: str, answer: str) -> tuple[int, int, int]:
    """(shared tokens, clipped by count; prediction tokens; answer tokens)."""
    pred, ref = Counter(_tokens(prediction)), Counter(_tokens(answer))
    return sum((pred & ref).values()), sum(pred.values()), sum(ref.values())


@metric("token_recall")
def token_recall(prediction: str, answers: list[str]) -> float:
    """The share of the answer's tokens found in the prediction (LLaVA-Med's open-question "recall")."""
    best = 0.0
    for answer in answers:
        shared, _, n_ref = _overlap(prediction, answer)
        best = max(best, shared / n_ref if n_ref else 0.0)
    return best


@metric("token_f1")
def token_f1(prediction: str, answers: list[str]) -> float:
    """Harmonic mean of token precision and recall (SQuAD's F1; LLaVA-Med's `calculate_f1score`)."""
    best = 0.0
    for answer in answers:
        shared, n_pred, n_ref = _overlap(prediction, answer)
        if shared:
            p, r = shared / n_pred, shared / n_ref
            best = max(best, 2 * p * r / (p + r))
    return best


@metric("bleu1")
def bleu1(prediction: str, answers: list[str]) -> float:
    """BLEU-1 of the prediction against each answer: clipped unigram precision times the brevity penalty
    exp(1 - r/c) when the prediction is shorter (NLTK's `sentence_bleu(weights=(1, 0, 0, 0))`, unsmoothed)."""
    best = 0.0
    for answer in answers:
        shared, n_pred, n_ref = _overlap(prediction, answer)
        if shared:
            brevity = 1.0 if n_pred >= n_ref else math.exp(1 - n_ref / n_pred)
            best = max(best, brevity * shared / n_pred)
    return best


def resolve_metric(name: str) -> Metric:
    """A built-in by name, or a user's `module:function` (same signature: prediction, accepted answers ->
    a score in [0, 1]); ValueError saying why it cannot be used."""
    if name in METRICS:
        return METRICS[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown metric {name!r}; built-in: {', '.join(METRICS)}; or a plug-in `module:function`")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"metric {name!r}: cannot import it ({type(err).__name__}: {err})") from None
    if not callable(fn):
        raise ValueError(f"metric {name!r}: {attr} is not a function")
    return fn
