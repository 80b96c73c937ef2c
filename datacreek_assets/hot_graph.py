"""FalkorDB hot layer: one graph per tenant (hard isolation by graph name)."""

from __future__ import annotations

from datacreek_assets.tenancy import validate_tenant_id

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
        from datacreek_assets.streaming.windows import apply_window, fold

        if not self.scope_exists(tenant_id):
            return 0
        graph = self.graph(tenant_id)
        before = self.node_count(tenant_id)
        apply_window(graph, fold(tenant_id, "erasure", document_events(tenant_id, [], [], [], deleted=[doc_id])))
        return before - self.node_count(tenant_id)

    def drop_scope(self, tenant_id: str) -> bool:
        if not self.scope_exists(tenant_id):
            return False
        self.graph(tenant_id).delete()
        return True

    def tenants(self) -> list[str]:
        return sorted(g[len(GRAPH_PREFIX):] for g in self.client.list_graphs() if g.startswith(GRAPH_PREFIX))
