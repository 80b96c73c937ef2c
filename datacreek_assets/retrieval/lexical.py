"""BM25 over a tenant's passages: the words a question shares with a chunk, next to the vectors.

MiniLM's vectors place "In json.loads, which hook takes priority?" near every chunk about json;
the identifier itself (``object_pairs_hook``, ``json.loads``) is what picks the right one. A
dotted or underscored identifier counts whole and by its parts, so ``json.dumps`` matches
``dumps`` and ``json.dumps`` alike. Scores are kept as an inverted index (term -> chunk rows and
their BM25 weights), so a question costs a few array additions, not a pass over every chunk.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

K1, B = 1.2, 0.75  # BM25's usual saturation and length normalisation
_WORD = re.compile(r"[a-z_][a-z0-9_.]*[a-z0-9_]|[a-z0-9_]+")
# question words and glue: they say what is asked, not what about
STOPWORDS = frozenset(
    "a an the of in on for to is are was what which who whose how does do did when where why with by from as at "
    "be it its this that these those and or if can should you your into than then there their".split())


def terms(text: str) -> list[str]:
    """Lower-cased words and identifiers, each dotted or underscored one also split into its parts
    (``json.object_pairs_hook``: itself, ``json``, ``object_pairs_hook``, ``object``, ``pairs``, ``hook``)."""
    out = []
    for word in _WORD.findall(text.lower()):
        dotted = word.split(".") if "." in word else []
        parts = [word, *dotted]
        for part in dotted or [word]:
            if "_" in part:
                parts += part.split("_")
        out += [p for p in parts if p and p not in STOPWORDS]
    return out


class LexicalIndex:
    """BM25 weights of ``texts`` (rows in order)."""

    def __init__(self, texts: list[str]):
        docs = [Counter(terms(t)) for t in texts]
        lengths = np.array([sum(d.values()) for d in docs], dtype=np.float32)
        mean = float(lengths.mean()) if len(docs) else 0.0
        mean = mean or 1.0  # no terms at all: every length term is 0 anyway
        found: dict[str, list[tuple[int, int]]] = {}  # term -> (row, count in that row)
        for i, doc in enumerate(docs):
            for term, count in doc.items():
                found.setdefault(term, []).append((i, count))
        self.size = len(texts)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, where in found.items():
            idx = np.asarray([i for i, _ in where], dtype=np.int32)
            tf = np.asarray([c for _, c in where], dtype=np.float32)
            idf = math.log(1 + (self.size - len(idx) + 0.5) / (len(idx) + 0.5))
            weight = idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths[idx] / mean))
            self.postings[term] = (idx, weight.astype(np.float32))

    def scores(self, question: str) -> np.ndarray:
        """Each row's BM25 score for ``question`` (each distinct term once)."""
        out = np.zeros(self.size, dtype=np.float32)
        for term in dict.fromkeys(terms(question)):
            found = self.postings.get(term)
            if found is not None:
                out[found[0]] += found[1]
        return out
