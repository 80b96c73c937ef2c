"""One tenant's 30 s window of graph events, folded into its FalkorDB hot graph.

The hot graph keeps chunks, the entities they mention and fact hyperedges, and derives from them
the co-occurrence edges between entities: an edge's weight is the number of live chunks that
mention both. A window upserts its chunks and mentions, removes its deleted documents, and then
recomputes the weight of every pair it touched from the chunks themselves (SET, never +=). So
applying a window twice, or replaying events after a restart, gives the same graph, and a deleted
document's contribution goes with its chunks. Every write records the window that made it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import combinations

from datacreek_assets.streaming.events import GraphEvent

WINDOW_SECONDS = 30


def stable_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


@dataclass
class WindowDelta:
    tenant_id: str
    window_id: str  # the window's start, ISO 8601
    chunks: dict[str, str] = field(default_factory=dict)  # chunk_id -> doc_id
    mentions: set[tuple[str, str, str]] = field(default_factory=set)  # (chunk_id, entity_id, name)
    facts: dict[str, dict] = field(default_factory=dict)  # fact_id -> the fact
    cleared_docs: set[str] = field(default_factory=set)  # deleted or rewritten: older rows go first
    deleted_docs: set[str] = field(default_factory=set)


def fold(tenant_id: str, window_id: str, events: list[GraphEvent]) -> WindowDelta:
    """The window's events, in their order, as one delta. A document event (a delete, or the
    upsert that starts a rewritten document's rows) drops the document's earlier rows, in this
    window and in the hot graph."""
    delta = WindowDelta(tenant_id, window_id)
    for event in events:
        if event.tenant_id != tenant_id:
            raise ValueError(f"event of tenant {event.tenant_id!r} in a window of {tenant_id!r}")
        doc_id, ids = event.doc_id, event.ids
        if event.kind == "document":
            delta.cleared_docs.add(doc_id)
            delta.chunks = {c: d for c, d in delta.chunks.items() if d != doc_id}
            delta.mentions = {m for m in delta.mentions if m[0] in delta.chunks}
            delta.facts = {f: fact for f, fact in delta.facts.items() if fact["doc_id"] != doc_id}
            (delta.deleted_docs.add if event.op == "delete" else delta.deleted_docs.discard)(doc_id)
        elif event.kind == "chunk":
            delta.chunks[ids["chunk_id"]] = doc_id
        elif event.kind == "mention":
            delta.chunks.setdefault(ids["chunk_id"], doc_id)
            delta.mentions.add((ids["chunk_id"], ids["entity_id"], ids["entity"]))
        elif event.kind == "fact":
            delta.facts[ids["fact_id"]] = {**ids, "doc_id": doc_id}
    return delta


def apply_window(graph, delta: WindowDelta) -> dict[str, int]:
    """Write ``delta`` to the tenant's FalkorDB graph (``HotGraphStore.graph(tenant)``); idempotent."""
    w = delta.window_id
    touched: set[tuple[str, str]] = set()
    for doc_id in sorted(delta.cleared_docs):  # the pairs their older chunks joined lose them
        touched |= chunk_pairs(graph.query(
            "MATCH (c:Chunk {doc_id: $doc})-[:MENTIONS]->(e:Entity) RETURN c.chunk_id, e.entity_id",
            {"doc": doc_id}).result_set)
        graph.query("MATCH (n) WHERE (n:Chunk OR n:Fact) AND n.doc_id = $doc DETACH DELETE n", {"doc": doc_id})
    if delta.chunks:
        graph.query("UNWIND $rows AS r MERGE (c:Chunk {chunk_id: r.chunk_id}) SET c.doc_id = r.doc_id, c.window = $w",
                    {"rows": [{"chunk_id": c, "doc_id": d} for c, d in sorted(delta.chunks.items())], "w": w})
    if delta.mentions:
        graph.query(
            "UNWIND $rows AS r MERGE (e:Entity {entity_id: r.entity_id}) SET e.name = r.name "
            "WITH r, e MATCH (c:Chunk {chunk_id: r.chunk_id}) MERGE (c)-[m:MENTIONS]->(e) SET m.window = $w",
            {"rows": [{"chunk_id": c, "entity_id": e, "name": n} for c, e, n in sorted(delta.mentions)], "w": w})
    if delta.facts:
        graph.query(
            "UNWIND $rows AS r MERGE (f:Fact {fact_id: r.fact_id}) "
            "SET f.doc_id = r.doc_id, f.predicate = r.predicate, f.subject = r.subject, f.object = r.object, "
            "f.chunk_id = r.chunk_id, f.window = $w",
            {"rows": [delta.facts[f] for f in sorted(delta.facts)], "w": w})
    # every pair in a chunk this window wrote to: its mentions may have come in an earlier window
    touched |= chunk_pairs(graph.query(
        "UNWIND $chunks AS id MATCH (c:Chunk {chunk_id: id})-[:MENTIONS]->(e:Entity) RETURN c.chunk_id, e.entity_id",
        {"chunks": sorted(delta.chunks)}).result_set) if delta.chunks else set()
    weights = recompute_pairs(graph, sorted(touched), w)
    graph.query("MATCH (e:Entity) WHERE NOT (e)<-[:MENTIONS]-(:Chunk) DETACH DELETE e")  # no chunk names it
    return {"chunks": len(delta.chunks), "mentions": len(delta.mentions), "facts": len(delta.facts),
            "deleted_documents": len(delta.deleted_docs), "pairs": len(touched),
            "edges_removed": sum(1 for weight in weights.values() if weight == 0)}


def chunk_pairs(rows) -> set[tuple[str, str]]:
    """Entity pairs mentioned by one chunk, from (chunk_id, entity_id) rows; each pair ordered."""
    by_chunk: dict[str, set[str]] = {}
    for chunk_id, entity_id in rows:
        by_chunk.setdefault(chunk_id, set()).add(entity_id)
    return {pair for entities in by_chunk.values() for pair in combinations(sorted(entities), 2)}


def recompute_pairs(graph, pairs: list[tuple[str, str]], window_id: str) -> dict[tuple[str, str], int]:
    """Each pair's weight from the chunks mentioning both (0: the edge goes)."""
    if not pairs:
        return {}
    rows = graph.query(
        "UNWIND $pairs AS p MATCH (a:Entity {entity_id: p[0]}), (b:Entity {entity_id: p[1]}) "
        "OPTIONAL MATCH (a)<-[:MENTIONS]-(c:Chunk)-[:MENTIONS]->(b) "
        "RETURN p[0], p[1], count(DISTINCT c)", {"pairs": [list(p) for p in pairs]}).result_set
    weights = {(a, b): int(n) for a, b, n in rows}
    live = [{"a": a, "b": b, "weight": n} for (a, b), n in weights.items() if n > 0]
    gone = [[a, b] for (a, b), n in weights.items() if n == 0]
    if live:
        graph.query(
            "UNWIND $rows AS r MATCH (a:Entity {entity_id: r.a}), (b:Entity {entity_id: r.b}) "
            "MERGE (a)-[e:CO_OCCURS]->(b) SET e.weight = r.weight, e.window = $w", {"rows": live, "w": window_id})
    if gone:
        graph.query("UNWIND $pairs AS p MATCH (:Entity {entity_id: p[0]})-[e:CO_OCCURS]->(:Entity {entity_id: p[1]}) "
                    "DELETE e", {"pairs": gone})
    return weights
