"""FalkorDB hot layer: one graph per tenant (hard isolation by graph name)."""

from __future__ import annotations

from datacreek_assets.tenancy import validate_tenant_id

GRAPH_PREFIX = "datacreek_tenant_"


def hot_graph_name(tenant_id: str) -> str:
    return GRAPH_PREFIX + validate_tenant_id(tenant_id)


class HotGraphStore:
    def __init__(self, client):
        self.client = client  # falkordb.FalkorDB

    def graph(self, tenant_id: str):
        return self.client.select_graph(hot_graph_name(tenant_id))

    def create_scope(self, tenant_id: str) -> None:
        self.graph(tenant_id).query("MERGE (:Tenant {tenant_id: $tenant})", {"tenant": tenant_id})

    def scope_exists(self, tenant_id: str) -> bool:
        # EXISTS on the graph's key, not GRAPH.LIST: a tenant's ACL user may touch its own key only
        return bool(self.client.connection.exists(hot_graph_name(tenant_id)))

    def node_count(self, tenant_id: str) -> int:
        if not self.scope_exists(tenant_id):
            return 0
        result = self.graph(tenant_id).ro_query("MATCH (n) RETURN count(n)")
        return int(result.result_set[0][0])

    def delete_document(self, tenant_id: str, doc_id: str) -> int:
        """Erasure: every node of the tenant's graph that carries the document's id; returns how many."""
        if not self.scope_exists(tenant_id):
            return 0
        result = self.graph(tenant_id).query(
            "MATCH (n) WHERE n.doc_id = $doc DETACH DELETE n RETURN count(n)", {"doc": doc_id})
        return int(result.result_set[0][0])

    def drop_scope(self, tenant_id: str) -> bool:
        if not self.scope_exists(tenant_id):
            return False
        self.graph(tenant_id).delete()
        return True

    def tenants(self) -> list[str]:
        return sorted(g[len(GRAPH_PREFIX):] for g in self.client.list_graphs() if g.startswith(GRAPH_PREFIX))
