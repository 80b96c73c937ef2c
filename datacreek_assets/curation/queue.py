"""The review queue: a tenant's undecided facts, with the Δλ of each, strongest first.

The graph whose spectrum is scored is the tenant's entity graph: two entities are joined with
the weight of the live chunks naming both (co-occurrence) plus one per live fact between them. A
fact's candidate change is its own share of that weight: one, taken away.

A fact is queued when its Δλ reaches τ (it shapes the graph: a mistake there costs most) or when
its extraction is doubtful (``confidence`` under ``LOW_CONFIDENCE``), whatever its Δλ.

Co-occurrence proposes edges too: two entities that at least ``MIN_COOCCURRENCE`` distinct
sentences of live chunks name together (the same sentence in two overlapping chunks counts once),
with no fact between them (live, rejected or proposed before), and that both look like things,
are a candidate relation; its Δλ is that of the co-occurrence edge removed, and it is queued when that reaches τ.
A curator's decision on one makes it a fact (``proposal_id``: the same pair, the same id), so a
pair is proposed once.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, replace
from itertools import combinations

from datacreek_assets.curation.spectral import Candidate, SpectralScorer

DEFAULT_TAU = 1e-4  # Δλ below this does not reach the queue (per tenant: a shorter or longer queue)
DEFAULT_LIMIT = 500
LOW_CONFIDENCE = 0.6
NEIGHBOURS = 4  # per endpoint, in the picture of an edge's neighbourhood
MIN_COOCCURRENCE = 2  # chunks naming a pair before it is proposed as a relation
COOCCURS = "co-occurs with"  # a proposed edge's predicate until a curator names it
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
    reasons: tuple[str, ...] = ()  # why it is queued: "structural" (Δλ ≥ τ), "low_confidence", "cooccurrence"
    subject_id: str = ""
    object_id: str = ""
    proposed: bool = False  # a co-occurrence, not yet a fact (``QueuedEdge.proposal`` is what deciding makes)


def proposal_id(a: str, b: str) -> str:
    """A proposed edge's id: its entity pair's (either order)."""
    first, second = sorted((a, b))
    return "co-" + hashlib.sha256(f"{first}\0{second}".encode()).hexdigest()[:20]


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
    look like things (not a capitalised participle, a literal or a fragment), each is named by more than
    one chunk, its predicate is a relation verb the dataset knows, and its sentence names both."""
    from datacreek_assets.datasets.sft import RELATION_VERBS, base_form

    value = 1.0
    for name, entity in ((fact["subject"], fact["subject_id"]), (fact["object"], fact["object_id"])):
        if not _thing(name):
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
                k: int = 4, top_k: int = 20, fact_pairs: set | None = None,
                chunk_texts: dict[str, str] | None = None) -> list[QueueItem]:
    """The undecided facts (not confirmed; rejected ones are not given) with a Δλ of at least ``tau`` or a doubtful extraction,
    and the proposed co-occurrence edges with a Δλ of at least ``tau``, strongest first, at most
    ``limit``; the first ``top_k`` exact (``SpectralScorer.scores``)."""
    return select(scored_candidates(mentions, facts, k, top_k, fact_pairs, chunk_texts), tau, limit)


def scored_candidates(mentions: list[dict], facts: list[dict], k: int = 4, top_k: int = 20,
                      fact_pairs: set | None = None, chunk_texts: dict[str, str] | None = None) -> list[QueueItem]:
    """Every undecided fact (not confirmed, not a self-loop) and every proposed co-occurrence edge
    with its Δλ (one eigensolve for all), strongest first. ``fact_pairs``: the entity pairs that
    have any fact (rejected ones too; default: those of ``facts``), which are not proposed."""
    # undecided: neither confirmed nor rejected (an undone decision leaves a fact undecided again)
    undecided = [f for f in facts if not f.get("confirmed") and f["subject_id"] != f["object_id"]]
    support = Counter(m["entity_id"] for m in mentions)
    taken = {tuple(sorted(p)) for p in (fact_pairs if fact_pairs is not None else
                                        ((f["subject_id"], f["object_id"]) for f in facts))}
    proposals = _proposals(mentions, taken, chunk_texts or {})
    if not undecided and not proposals:
        return []
    scorer = SpectralScorer(entity_graph(mentions, facts), k=k)
    by_pair: dict[tuple[str, str], list[QueueItem]] = {}
    for f in undecided:
        by_pair.setdefault((f["subject_id"], f["object_id"]), []).append(QueueItem(
            f["fact_id"], f["subject"], f["predicate"], f["object"], f.get("sentence") or "", f["doc_id"],
            f["chunk_id"], int(f.get("version") or 0), (), 0.0, False, False, "", confidence(f, support),
            subject_id=f["subject_id"], object_id=f["object_id"]))
    candidates = [Candidate(u, v, weight=1.0) for u, v in by_pair]  # a fact's own share of the edge
    for item in proposals:
        by_pair[(item.subject_id, item.object_id)] = [item]
        candidates.append(Candidate(item.subject_id, item.object_id))  # the whole co-occurrence edge
    return [replace(item, delta=s.delta, score=s.score, exact=s.exact, trusted=s.trusted, reason=s.reason)
            for s in scorer.scores(candidates, top_k=top_k) for item in by_pair[(s.u, s.v)]]


def _proposals(mentions: list[dict], taken: set, chunk_texts: dict[str, str]) -> list[QueueItem]:
    from datacreek_assets.ingest.chunking import split_sentences

    names, doc_of, by_chunk = {}, {}, {}
    for m in mentions:
        names[m["entity_id"]] = m.get("entity") or m["entity_id"]
        doc_of[m["chunk_id"]] = m.get("doc_id") or ""
        by_chunk.setdefault(m["chunk_id"], set()).add(m["entity_id"])
    shared: dict[tuple[str, str], list[str]] = {}
    for chunk, entities in sorted(by_chunk.items()):
        for pair in combinations(sorted(entities), 2):
            shared.setdefault(pair, []).append(chunk)
    sentences: dict[str, list[str]] = {}
    items = []
    for (a, b), chunks in sorted(shared.items()):
        if len(chunks) < MIN_COOCCURRENCE or (a, b) in taken or not (_thing(names[a]) and _thing(names[b])):
            continue
        both = [re.compile(rf"(?<!\w){re.escape(names[e])}(?!\w)", re.IGNORECASE) for e in (a, b)]
        evidence: dict[str, str] = {}  # distinct sentence -> its chunk
        for chunk in chunks:
            if chunk not in sentences:
                sentences[chunk] = split_sentences(chunk_texts.get(chunk, ""))
            for sentence in sentences[chunk]:
                if all(p.search(sentence) for p in both):
                    evidence.setdefault(" ".join(sentence.lower().split()), (sentence, chunk))
        if len(evidence) < MIN_COOCCURRENCE:
            continue
        sentence, chunk = next(iter(evidence.values()))
        # how often they meet: 2 sentences 0.5, 3 sentences 0.75... (a co-occurrence, not an extraction)
        strength = round(1 - 0.5 ** (len(evidence) - 1), 3)
        items.append(QueueItem(proposal_id(a, b), names[a], COOCCURS, names[b], sentence, doc_of[chunk], chunk, 0,
                               (), 0.0, False, False, "", strength, subject_id=a, object_id=b, proposed=True))
    return items


def _thing(name: str) -> bool:
    """Whether an entity's name looks like a thing: not a literal, a fragment or a capitalised participle."""
    from datacreek_assets.datasets.quality import LITERALS

    name = (name or "").strip()
    return len(name) > 2 and name not in LITERALS and not _PARTICIPLE.match(name)


def select(items: list[QueueItem], tau: float = DEFAULT_TAU, limit: int = DEFAULT_LIMIT) -> list[QueueItem]:
    """Facts whose Δλ reaches ``tau`` or whose extraction is doubtful, and proposed edges whose Δλ
    reaches ``tau``, with the reasons, at most ``limit``."""
    if tau < 0 or limit < 1:
        raise ValueError("tau is at least 0 and limit at least 1")
    queued = []
    for item in items:
        structural = ("structural",) if item.score >= tau else ()
        if item.proposed:
            reasons = structural + ("cooccurrence",) if structural else ()
        else:
            reasons = structural + (("low_confidence",) if item.confidence < LOW_CONFIDENCE else ())
        if reasons:
            queued.append(replace(item, reasons=reasons))
    return queued[:limit]
