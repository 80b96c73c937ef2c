"""What makes an SFT record one a person would accept: a real entity as its subject, a question
with one short answer, that answer found verbatim in its source, and no near-twin in the set.

Each record gets a quality score in [0, 1]: grounding (the answer occurs verbatim in the source
passage: 1; otherwise the share of its content words there) x brevity (1 up to 4 words, falling
to 0 at 16) x the template's extraction confidence. Records under ``QUALITY_THRESHOLD`` are
dropped and counted.
"""

from __future__ import annotations

import re
from collections import Counter

QUALITY_THRESHOLD = 0.5
SHORT_ANSWER_WORDS = 4
MAX_ANSWER_WORDS = 16
NEAR_DUPLICATE_JACCARD = 0.7
# How sure the extraction is that the question has exactly this answer.
CONFIDENCE = {"blank.j2": 0.8, "member.j2": 0.95, "acronym.j2": 0.95, "default.j2": 0.9, "definition.j2": 0.85, "relation.j2": 0.7, "absent.j2": 0.9}

_WORD = re.compile(r"[A-Za-z0-9_]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_HOSTNAME = re.compile(r"\.(?:org|com|net|io|html?)$")  # "json.org" is a site, not a topic
LITERALS = {"None", "True", "False", "NULL", "NaN"}  # values, not things with definitions
STOPWORDS = set("a an the is are was were of to in on for and or by with as at from that this it its be "
                "which what does do".split())


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def content_words(text: str) -> set[str]:
    return set(words(text)) - STOPWORDS


def grounding(answer: str, source: str) -> float:
    if " ".join(answer.lower().split()) in " ".join(source.lower().split()):
        return 1.0
    wanted = content_words(answer)
    return len(wanted & content_words(source)) / len(wanted) if wanted else 0.0


def brevity(answer: str) -> float:
    n = len(answer.split())
    if n <= SHORT_ANSWER_WORDS:
        return 1.0
    return max(0.0, (MAX_ANSWER_WORDS - n) / (MAX_ANSWER_WORDS - SHORT_ANSWER_WORDS))


def quality_score(template: str, answer: str, source: str, confidence_factor: float = 1.0) -> float:
    return round(grounding(answer, source) * brevity(answer) * CONFIDENCE[template] * confidence_factor, 4)


class EntityVocabulary:
    """Which capitalised words of a tenant's text are names and which are ordinary words.

    A word the corpus writes in lower case more often than capitalised ("Nobody", "Substitute",
    "Expecting") is a common word that happened to start a sentence; a name seen once and in no
    fact says nothing; a token with code punctuation is code, not a topic."""

    def __init__(self, texts: list[str]):
        self.lower: Counter = Counter()
        self.capital: Counter = Counter()
        for text in texts:
            for w in _WORD.findall(text):
                (self.capital if w[:1].isupper() else self.lower)[w.lower()] += 1

    def is_common_word(self, name: str) -> bool:
        parts = name.split()
        if len(parts) != 1 or not parts[0].isalpha():
            return False
        word = parts[0].lower()
        return self.lower[word] >= self.capital[word] or (parts[0].istitle() and self.capital[word] < 2)

    def reason_to_reject(self, name: str) -> str | None:
        if len(name) < 2:
            return "short_entity"
        if not all(_IDENTIFIER.match(p) for p in name.split()) or name in LITERALS or _HOSTNAME.search(name):
            return "code_token"
        if name.lower() in STOPWORDS or self.is_common_word(name):
            return "common_word"
        return None


def near_duplicates(questions: list[str], answers: list[str], scores: list[float]) -> set[int]:
    """Indices to drop: of records with the same normalised answer whose questions share at least
    ``NEAR_DUPLICATE_JACCARD`` of their content words, the lower-scored ones."""
    by_answer: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        by_answer.setdefault(" ".join(words(a)), []).append(i)
    drop: set[int] = set()
    for members in by_answer.values():
        members.sort(key=lambda i: (-scores[i], questions[i]))
        kept: list[tuple[int, set[str]]] = []
        for i in members:
            q = content_words(questions[i])
            if any(len(q & k) / max(1, len(q | k)) >= NEAR_DUPLICATE_JACCARD for _, k in kept):
                drop.add(i)
            else:
                kept.append((i, q))
    return drop
