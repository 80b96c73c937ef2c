"""FalkorDB hot layer: one graph per tenant (hard isolation by graph name)."""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING

from datacreek_assets.tenancy import validate_tenant_id

if TYPE_CHECKING:
    from datacreek_assets.streaming.windows import WindowDelta

GRAPH_PREFIX = "datacreek_tenant_"
HOT_INDEXES = (("Chunk", "chunk_id"), ("Chunk", "doc_id"), ("Entity", "entity_id"), ("Fact", "fact_id"),
               ("Fact", "doc_id"))


def hot_graph_name(tenant_id: str) -> str:
    return GRAPH_PREFIX + validate_tenant_id(tenant_id)


class HotGraphStore:
    def __init__(self, client):
        self.client = client  # falkordb.FalkorDB

    def graph(self, tenant_id: str):
        return self.client.select_graph(hot_graph_name(tenant_id))

    def create_scope(self, tenant_id: str) -> None:
        import redis

        graph = self.graph(tenant_id)
        graph.query("MERGE (:Tenant {tenant_id: $tenant})", {"tenant": tenant_id})
        for label, key in HOT_INDEXES:  # what the stream's MERGEs and the hot queries look up
            try:
                graph.query(f"CREATE INDEX FOR (n:{label}) ON (n.{key})")
            except redis.ResponseError as err:
                if "already indexed" not in str(err):
                    raise

    def scope_exists(self, tenant_id: str) -> bool:
        # EXISTS on the graph's key, not GRAPH.LIST: a tenant's ACL user may touch its own key only
        return bool(self.client.connection.exists(hot_graph_name(tenant_id)))

    def node_count(self, tenant_id: str) -> int:
        if not self.scope_exists(tenant_id):
            return 0
        result = self.graph(tenant_id).ro_query("MATCH (n) RETURN count(n)")
        return int(result.result_set[0][0])

    def delete_document(self, tenant_id: str, doc_id: str) -> int:
        """Erasure: the document's chunks and facts go as a stream window's delete takes them (the
        co-occurrence weights recomputed, entities no chunk names removed); returns the nodes removed."""
        from datacreek_assets.streaming.events import document_events
        from datacreek_assets.streaming.windows import fold

        if not self.scope_exists(tenant_id):
            return 0
        before = self.node_count(tenant_id)
        self.apply_window(fold(tenant_id, "erasure", document_events(tenant_id, [], [], [], deleted=[doc_id])))
        return before - self.node_count(tenant_id)

    def apply_window(self, delta: WindowDelta) -> dict[str, int]:
        """Write one window's delta (``streaming.windows.fold``) to its tenant's graph; idempotent."""
        graph, w = self.graph(delta.tenant_id), delta.window_id
        touched: set[tuple[str, str]] = set()
        for doc_id in sorted(delta.cleared_docs):  # the pairs their older chunks joined lose them
            touched |= _chunk_pairs(graph.query(
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
        touched |= _chunk_pairs(graph.query(
            "UNWIND $chunks AS id MATCH (c:Chunk {chunk_id: id})-[:MENTIONS]->(e:Entity) RETURN c.chunk_id, e.entity_id",
            {"chunks": sorted(delta.chunks)}).result_set) if delta.chunks else set()
        weights = _recompute_pairs(graph, sorted(touched), w)
        graph.query("MATCH (e:Entity) WHERE NOT (e)<-[:MENTIONS]-(:Chunk) DETACH DELETE e")  # no chunk names it
        return {"chunks": len(delta.chunks), "mentions": len(delta.mentions), "facts": len(delta.facts),
                "deleted_documents": len(delta.deleted_docs), "pairs": len(touched),
                "edges_removed": sum(1 for weight in weights.values() if weight == 0)}

    def drop_scope(self, tenant_id: str) -> bool:
        if not self.scope_exists(tenant_id):
            return False
        self.graph(tenant_id).delete()
        return True

    def tenants(self) -> list[str]:
        return sorted(g[len(GRAPH_PREFIX):] for g in self.client.list_graphs() if g.startswith(GRAPH_PREFIX))


def _chunk_pairs(rows) -> set[tuple[str, str]]:
    """Entity pairs mentioned by one chunk, from (chunk_id, entity_id) rows; each pair ordered."""
    by_chunk: dict[str, set[str]] = {}
    for chunk_id, entity_id in rows:
        by_chunk.setdefault(chunk_id, set()).add(entity_id)
    return {pair for entities in by_chunk.values() for pair in combinations(sorted(entities), 2)}


def _recompute_pairs(graph, pairs: list[tuple[str, str]], window_id: str) -> dict[tuple[str, str], int]:
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
