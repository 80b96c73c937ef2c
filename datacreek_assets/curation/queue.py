"""The review queue: a tenant's undecided facts, with the Δλ of each, strongest first.

The graph whose spectrum is scored is the tenant's entity graph: two entities are joined with
the weight of the live chunks naming both (co-occurrence) plus one per live fact between them. A
fact's candidate change is its own share of that weight: one, taken away.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from datacreek_assets.curation.spectral import Candidate, SpectralScorer

DEFAULT_TAU = 1e-3  # Δλ below this does not reach the queue (per tenant: a shorter or longer queue)
DEFAULT_LIMIT = 500


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


def entity_graph(mentions: list[dict], facts: list[dict]) -> list[tuple[str, str, float]]:
    """(entity, entity, weight) edges: chunks naming both, plus one per fact between them."""
    by_chunk: dict[str, set[str]] = {}
    for m in mentions:
        by_chunk.setdefault(m["chunk_id"], set()).add(m["entity_id"])
    weights: Counter = Counter(pair for entities in by_chunk.values() for pair in combinations(sorted(entities), 2))
    weights.update(tuple(sorted((f["subject_id"], f["object_id"]))) for f in facts if f["subject_id"] != f["object_id"])
    return [(a, b, float(w)) for (a, b), w in sorted(weights.items())]


def build_queue(mentions: list[dict], facts: list[dict], tau: float = DEFAULT_TAU, limit: int = DEFAULT_LIMIT,
                k: int = 4, top_k: int = 20) -> list[QueueItem]:
    """The undecided facts (no version yet) with a Δλ of at least ``tau``, strongest first, at most
    ``limit``; the first ``top_k`` exact (``SpectralScorer.scores``)."""
    if tau < 0 or limit < 1:
        raise ValueError("tau is at least 0 and limit at least 1")
    undecided = [f for f in facts if not f.get("version") and f["subject_id"] != f["object_id"]]
    if not undecided:
        return []
    scorer = SpectralScorer(entity_graph(mentions, facts), k=k)
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for fact in undecided:
        by_pair.setdefault((fact["subject_id"], fact["object_id"]), []).append(fact)
    scores = scorer.scores([Candidate(u, v, weight=1.0) for u, v in by_pair], top_k=top_k)
    items = [QueueItem(f["fact_id"], f["subject"], f["predicate"], f["object"], f.get("sentence") or "",
                       f["doc_id"], f["chunk_id"], int(f.get("version") or 0), s.delta, s.score, s.exact, s.trusted,
                       s.reason)
             for s in scores if s.score >= tau for f in by_pair[(s.u, s.v)]]
    return items[:limit]
