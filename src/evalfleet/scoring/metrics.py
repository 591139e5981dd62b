"""Per-sample metrics. Each maps (prediction, accepted answers) to a score in [0, 1]."""

from __future__ import annotations

import importlib
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
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
METRICS_VERSION = 2
"""Bumped when a built-in metric's definition changes (2: Chinese text tokenised by character), so that stored
scores are computed again (`record.py: scoring_key`)."""


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
    return _closed(tuple(answers))


@lru_cache(maxsize=1 << 12)
def _closed(answers: tuple[str, ...]) -> bool:  # a million rows repeat a few thousand answer lists
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
# (lower case, punctuation and articles dropped), Chinese and Japanese text a character each (`tokens`); the best
# accepted answer counts.
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f])")
"""Han characters (CJK unified ideographs, extensions A to G, compatibility ideographs) and Japanese kana."""


def tokens(text: str) -> list[str]:
    """The tokens the token metrics count: the words of `normalize`, with every Chinese character (and Japanese
    kana) a token of its own, and punctuation (ASCII, and Unicode's: `，。、？`) dropped. "肝脏和肾脏" is
    肝 脏 和 肾 脏; "CT扫描" is ct 扫 描.

    Chinese is written without spaces, so splitting on spaces makes a whole answer one token and any difference
    in wording scores 0. This follows the character-level convention of Chinese reading-comprehension F1: CMRC
    2018's evaluation script (`mixed_segmentation`: each Chinese character a token, runs of other characters kept
    as words, punctuation removed), which CLUE uses, rather than a word segmenter (LongBench's `qa_f1_zh_score`
    uses jieba): characters need no dictionary, give the same tokens on every machine, and do not depend on a
    segmenter's version or its handling of medical terms. Korean is written with spaces and keeps its words."""
    out: list[str] = []
    for word in normalize(text).split():
        for part in _CJK.split(word):
            kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in part)
            out += kept.split()
    return out


def _overlap(prediction: str, answer: str) -> tuple[int, int, int]:
    """(shared tokens, clipped by count; prediction tokens; answer tokens)."""
    pred, ref = Counter(tokens(prediction)), Counter(tokens(answer))
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
