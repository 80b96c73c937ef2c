"""The review queue: a tenant's undecided facts, with the Δλ of each, strongest first.

The graph whose spectrum is scored is the tenant's entity graph: two entities are joined with
the weight of the live chunks naming both (co-occurrence) plus one per live fact between them. A
fact's candidate change is its own share of that weight: one, taken away.

A fact is queued when its Δλ reaches τ (it shapes the graph: a mistake there costs most) or when
its extraction is doubtful (``confidence`` under ``LOW_CONFIDENCE``), whatever its Δλ.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from itertools import combinations

from datacreek_assets.curation.spectral import Candidate, SpectralScorer

DEFAULT_TAU = 1e-3  # Δλ below this does not reach the queue (per tenant: a shorter or longer queue)
DEFAULT_LIMIT = 500
LOW_CONFIDENCE = 0.6
NEIGHBOURS = 4  # per endpoint, in the picture of an edge's neighbourhood
_PARTICIPLE = re.compile(r"^[A-Z][a-z]+(?:ing|ed)$")  # "Expecting", "Returned": a sentence's first word, not a thing


@dataclass(frozen=True)
class QueueItem:
    fact_id: str
    subject: str
    predicate: str
    object: str
    sentence: str
    doc_id: str
    chunk_id: str
    version: int
    delta: tuple[float, ...]
    score: float
    exact: bool
    trusted: bool
    reason: str
    confidence: float = 1.0
    reasons: tuple[str, ...] = ()  # why it is queued: "structural" (Δλ ≥ τ), "low_confidence"


def entity_graph(mentions: list[dict], facts: list[dict]) -> list[tuple[str, str, float]]:
    """(entity, entity, weight) edges: chunks naming both, plus one per fact between them."""
    by_chunk: dict[str, set[str]] = {}
    for m in mentions:
        by_chunk.setdefault(m["chunk_id"], set()).add(m["entity_id"])
    weights: Counter = Counter(pair for entities in by_chunk.values() for pair in combinations(sorted(entities), 2))
    weights.update(tuple(sorted((f["subject_id"], f["object_id"]))) for f in facts if f["subject_id"] != f["object_id"])
    return [(a, b, float(w)) for (a, b), w in sorted(weights.items())]


def confidence(fact: dict, support: Counter) -> float:
    """How far the rule-based extraction can be believed for this fact, from 0 to 1: its entities
    look like things (not a capitalised participle, not a fragment), each is named by more than
    one chunk, its predicate is a relation verb the dataset knows, and its sentence names both."""
    from datacreek_assets.datasets.sft import RELATION_VERBS, base_form

    value = 1.0
    for name, entity in ((fact["subject"], fact["subject_id"]), (fact["object"], fact["object_id"])):
        if _PARTICIPLE.match(name or "") or len((name or "").strip()) <= 2:
            value *= 0.5
        if support[entity] < 2:
            value *= 0.8
    verb = (fact["predicate"] or "").split()[0] if (fact["predicate"] or "").split() else ""
    if base_form(verb) not in RELATION_VERBS:
        value *= 0.8
    sentence = (fact.get("sentence") or "").lower()
    if (fact["subject"] or "").lower() not in sentence or (fact["object"] or "").lower() not in sentence:
        value *= 0.7
    return round(value, 3)


def neighbourhood(edges: list[tuple[str, str, float]], names: dict[str, str], u: str, v: str,
                  per_endpoint: int = NEIGHBOURS) -> list[list]:
    """The edge and each endpoint's strongest neighbours, as [name, name, weight] (the first row
    is the edge itself): what the review page draws."""
    around: dict[str, list[tuple[float, str]]] = {u: [], v: []}
    weight = 0.0
    for a, b, w in edges:
        if {a, b} == {u, v}:
            weight = w
        elif a in around:
            around[a].append((w, b))
        elif b in around:
            around[b].append((w, a))
    rows = [[names.get(u, u), names.get(v, v), weight]]
    for end in (u, v):
        rows += [[names.get(end, end), names.get(n, n), w] for w, n in sorted(around[end], key=lambda x: (-x[0], x[1]))[:per_endpoint]]
    return rows


def build_queue(mentions: list[dict], facts: list[dict], tau: float = DEFAULT_TAU, limit: int = DEFAULT_LIMIT,
                k: int = 4, top_k: int = 20) -> list[QueueItem]:
    """The undecided facts (no version yet) with a Δλ of at least ``tau``, strongest first, at most
    ``limit``; the first ``top_k`` exact (``SpectralScorer.scores``)."""
    if tau < 0 or limit < 1:
        raise ValueError("tau is at least 0 and limit at least 1")
    undecided = [f for f in facts if not f.get("version") and f["subject_id"] != f["object_id"]]
    if not undecided:
        return []
    support = Counter(m["entity_id"] for m in mentions)
    scorer = SpectralScorer(entity_graph(mentions, facts), k=k)
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for fact in undecided:
        by_pair.setdefault((fact["subject_id"], fact["object_id"]), []).append(fact)
    scores = scorer.scores([Candidate(u, v, weight=1.0) for u, v in by_pair], top_k=top_k)
    items = []
    for s in scores:
        for f in by_pair[(s.u, s.v)]:
            believed = confidence(f, support)
            reasons = (("structural",) if s.score >= tau else ()) + (("low_confidence",) if believed < LOW_CONFIDENCE else ())
            if reasons:
                items.append(QueueItem(f["fact_id"], f["subject"], f["predicate"], f["object"], f.get("sentence") or "",
                                       f["doc_id"], f["chunk_id"], int(f.get("version") or 0), s.delta, s.score,
                                       s.exact, s.trusted, s.reason, believed, reasons))
    return items[:limit]
