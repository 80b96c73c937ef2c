"""Exact match and token F1 (SQuAD-style normalisation) for held-out QA pairs."""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return _ARTICLES.sub(" ", text).split()


def _visible(text: str) -> str:
    return "".join(text.split())


def _symbols_only(reference: str) -> bool:
    """A reference such as '+' or (',', ':'): SQuAD's normalisation (no punctuation) leaves nothing
    of it, and any prediction of symbols would then match it. Such answers compare as written,
    blanks aside."""
    return not any(ch.isalnum() for ch in reference) and bool(_visible(reference))


def exact_match(prediction: str, reference: str) -> float:
    if _symbols_only(reference):
        return float(_visible(prediction) == _visible(reference))
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    if _symbols_only(reference):
        return exact_match(prediction, reference)
    pred, ref = normalize(prediction), normalize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, reference: str) -> float:
    """The reference's normalised tokens appear, in order and together, in the prediction: a
    correct answer said in a few more words ("It returns False." for "False")."""
    if _symbols_only(reference):
        return float(_visible(reference) in _visible(prediction))
    pred, ref = normalize(prediction), normalize(reference)
    if not ref:
        return float(not pred)
    return float(any(pred[i:i + len(ref)] == ref for i in range(len(pred) - len(ref) + 1)))


@dataclass
class QaScores:
    questions: int
    exact_match: float
    f1: float
    contains: float = 0.0

    @classmethod
    def of(cls, predictions: list[str], references: list[str]) -> "QaScores":
        if len(predictions) != len(references):
            raise ValueError("predictions and references differ in length")
        n = len(references)
        if n == 0:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(n, sum(map(exact_match, predictions, references)) / n,
                   sum(map(token_f1, predictions, references)) / n,
                   sum(map(contains_answer, predictions, references)) / n)
