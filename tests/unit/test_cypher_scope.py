"""No Cypher reaches Neo4j except through the tenant-scoped repository."""

import re
from pathlib import Path

import pytest

from datacreek_assets.graph_store import TenantGraph, UnscopedQuery

REPO = Path(__file__).resolve().parents[2]
REPOSITORY = REPO / "datacreek_assets" / "graph_store.py"
DRIVER_CALLS = re.compile(r"\.(execute_query|execute_write|execute_read|run|session|begin_transaction)\(")
CYPHER = re.compile(r"\b(MATCH|MERGE|CREATE)\s*\(")  # Cypher keywords, as the code writes them


def product_files():
    for folder in ("datacreek_assets", "resources", "bench"):
        yield from (REPO / folder).rglob("*.py")
    yield REPO / "definitions.py"


def test_no_driver_calls_outside_the_repository():
    offenders = []
    for path in product_files():
        if path == REPOSITORY:
            continue
        text = path.read_text()
        if "neo4j" not in text and "driver" not in text:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if DRIVER_CALLS.search(line) and ("driver" in line or "session" in line or "tx" in line):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_no_cypher_text_outside_the_repositories():
    allowed = {REPOSITORY, REPO / "datacreek_assets" / "hot_graph.py"}  # FalkorDB: one graph per tenant
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
