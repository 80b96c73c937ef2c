"""No Cypher reaches Neo4j except through the tenant-scoped repository."""

import re
from pathlib import Path

import pytest

from datacreek_assets.graph.cypher_scope import UnscopedQuery
from datacreek_assets.graph_store import TenantGraph

REPO = Path(__file__).resolve().parents[2]
# TenantGraph's module and the mixin it takes its curation methods from (the same choke points)
REPOSITORY = {REPO / "datacreek_assets" / "graph_store.py", REPO / "datacreek_assets" / "graph" / "fact_curation.py"}
DRIVER_CALLS = re.compile(r"\.(execute_query|execute_write|execute_read|run|session|begin_transaction)\(")
CYPHER = re.compile(r"\b(MATCH|MERGE|CREATE)\s*\(")  # Cypher keywords, as the code writes them


def product_files():
    for folder in ("datacreek_assets", "resources", "bench"):
        yield from (REPO / folder).rglob("*.py")
    yield REPO / "definitions.py"


def test_no_driver_calls_outside_the_repository():
    offenders = []
    for path in product_files():
        if path in REPOSITORY:
            continue
        text = path.read_text()
        if "neo4j" not in text and "driver" not in text:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if DRIVER_CALLS.search(line) and ("driver" in line or "session" in line or "tx" in line):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_no_cypher_text_outside_the_repositories():
    allowed = {*REPOSITORY, REPO / "datacreek_assets" / "hot_graph.py"}  # FalkorDB: one graph per tenant
    offenders = [
        str(path.relative_to(REPO))
        for path in product_files()
        if path not in allowed and CYPHER.search(path.read_text())
    ]
    assert offenders == []


def test_repository_refuses_unscoped_cypher():
    graph = TenantGraph(driver=None, tenant_id="acme")
    with pytest.raises(UnscopedQuery):
        graph._execute("MATCH (n) RETURN n")
    with pytest.raises(UnscopedQuery):
        graph._execute("MATCH (n {tenant_id: $tenant}) RETURN n", tenant="globex")


@pytest.mark.parametrize("cypher", [
    # one scoped MATCH used to let an unscoped one through, since $tenant appeared somewhere
    "MATCH (a:Chunk {tenant_id: $tenant}) MATCH (b:Chunk) RETURN a, b",
    "MATCH (a:Chunk {tenant_id: $tenant})-[:NEXT]->(b:Chunk) RETURN b",
    "MATCH (a:Chunk {tenant_id: $tenant})-[:NEXT]->(b) RETURN b",
    "MATCH (a:Chunk {tenant_id: $tenant}) OPTIONAL MATCH (x) RETURN a, x",
    "MATCH (a:Chunk {tenant_id: $tenant}) WITH a MATCH (d:Document {tenant_id: 'globex'}) RETURN d",
    "MATCH (d:Document {doc_id: $tenant}) RETURN d",  # $tenant, but not as the tenant_id
    "MATCH (d:Document {tenant_id: $tenant_other}) RETURN d",
    "MATCH (d:Document) WHERE d.tenant_id = $tenant OR true RETURN d",
    "MATCH (a:Chunk {tenant_id: $tenant}) CALL { MATCH (n) DETACH DELETE n } RETURN a",
    "MATCH (a {tenant_id: $tenant}), ()-[r]->() DELETE r",
    "MERGE (e:Entity {entity_id: 'x'}) WITH e MATCH (c:Chunk {tenant_id: $tenant}) RETURN c",
    "MATCH (a:Chunk {tenant_id: $tenant}) MATCH (a)-[:NEXT]->(b {tenant_id: 'globex'}) RETURN b",
    "MATCH (a:Chunk {tenant_id: $tenant}) // {tenant_id: $tenant}\nMATCH (b:Chunk) RETURN b",
    "MATCH (a:Chunk {tenant_id: $tenant}) MATCH (b:Chunk {note: '{tenant_id: $tenant}'}) RETURN b",
    "MATCH (a:Chunk {tenant_id: $tenant}) MATCH (a:Chunk {chunk_id: 'x'}) RETURN a",  # rebinding with new props
    "RETURN $tenant",
    "CALL db.labels()",
])
def test_every_node_pattern_must_be_bound_to_the_tenant(cypher):
    graph = TenantGraph(driver=None, tenant_id="acme")  # refused before any driver is touched
    with pytest.raises(UnscopedQuery):
        graph._execute(cypher)


@pytest.mark.parametrize("cypher", [
    "MATCH (a:Chunk {tenant_id: $tenant})-[:NEXT]->(b:Chunk {tenant_id: $tenant}) RETURN count(b) AS n",
    "MATCH (a:Chunk {tenant_id: $tenant, chunk_id: $id}) MATCH (a)-[:NEXT]->(b:Chunk {tenant_id: $tenant}) RETURN b",
    "UNWIND $rows AS row MERGE (d:Document {tenant_id: $tenant, doc_id: row.doc_id}) SET d += row.props",
    "MATCH (e:Entity {tenant_id: $tenant}) WHERE NOT (e)--({tenant_id: $tenant}) DELETE e",
    "MATCH (d:Document {tenant_id: $tenant}) WHERE d.name = 'a (b) c' RETURN d",
])
def test_scoped_queries_pass_the_guard(cypher):
    from datacreek_assets.graph.cypher_scope import check_scoped

    check_scoped(cypher, {})
