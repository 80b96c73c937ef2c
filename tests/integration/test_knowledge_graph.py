"""Incremental, idempotent, tenant-isolated graph writes against the real Neo4j."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import neo4j
import pytest

from datacreek_assets.graph.sync import OPERATOR, sync_documents
from datacreek_assets.ingest.chunking import chunk_text
from datacreek_assets.ingest.parsing import parse_document

pytestmark = pytest.mark.integration

CORPUS = {
    "rivers.txt": "The Danube flows through Vienna and Budapest. The Rhine is a river that rises in the Swiss Alps.",
    "tools.md": "# Tools\n\nGit is a distributed version control system. Neo4j stores data as nodes and relationships.",
    "langs.html": "<p>Python is a programming language. The json module provides functions for encoding JSON.</p>",
}


def inputs(corpus: dict[str, str]):
    docs, chunks = [], {}
    for doc_id, text in corpus.items():
        parsed = parse_document(doc_id, text.encode())
        docs.append({"doc_id": doc_id, "content_hash": parsed.content_hash, "format": parsed.format,
                     "size_bytes": parsed.size_bytes})
        chunks[doc_id] = [c.__dict__ for c in chunk_text(doc_id, parsed.text)]
    return docs, chunks


@pytest.fixture
def graphs(local_resources, request):
    """Two tenants with the same document names; wiped before and after."""
    names = [f"kg-{request.node.name[-20:].lower().replace('_', '-').strip('-')}-{i}" for i in (1, 2)]
    with local_resources["graph_store"].admin() as admin:
        for name in names:
            admin.create_scope(name)
        yield [admin.tenant(n) for n in names]
        for name in names:
            admin.drop_scope(name)


def test_rerun_writes_nothing_and_leaves_an_identical_graph(graphs):
    graph, _ = graphs
    first = sync_documents(graph, *inputs(CORPUS))
    assert sorted(first.written) == sorted(CORPUS) and first.facts > 0
    before = graph.fingerprint()
    second = sync_documents(graph, *inputs(CORPUS))
    assert second.written == [] and sorted(second.unchanged) == sorted(CORPUS)
    assert sum(second.counters.values()) == 0
    assert graph.fingerprint() == before
    counts = graph.counts()
    assert counts.nodes["Document"] == 3 and counts.nodes["Fact"] >= 4
    assert {"HAS_CHUNK", "MENTIONS", "SUBJECT", "OBJECT", "SOURCE"} <= set(counts.relationships)


def test_editing_one_document_replaces_only_its_subgraph(graphs):
    graph, _ = graphs
    sync_documents(graph, *inputs(CORPUS))
    untouched = {c["chunk_id"] for c in graph.live_chunks() if c["doc_id"] != "rivers.txt"}
    facts_elsewhere = {f["fact_id"] for f in graph.live_facts() if f["doc_id"] != "rivers.txt"}
    edited = {**CORPUS, "rivers.txt": "The Amazon River carries more water than any other river."}
    report = sync_documents(graph, *inputs(edited))
    assert report.written == ["rivers.txt"] and sorted(report.unchanged) == ["langs.html", "tools.md"]
    assert {c["chunk_id"] for c in graph.live_chunks() if c["doc_id"] != "rivers.txt"} == untouched
    assert {f["fact_id"] for f in graph.live_facts() if f["doc_id"] != "rivers.txt"} == facts_elsewhere
    river_facts = {(f["subject"], f["object"]) for f in graph.live_facts() if f["doc_id"] == "rivers.txt"}
    assert river_facts == {("Amazon River", "more water")}
    entities = {row["entity"] for row in graph.document_subgraph("rivers.txt")}
    assert "Danube" not in entities and "Amazon River" in entities


def test_removed_document_is_soft_deleted_invisible_and_restorable(graphs):
    graph, _ = graphs
    sync_documents(graph, *inputs(CORPUS))
    smaller = {k: v for k, v in CORPUS.items() if k != "tools.md"}
    report = sync_documents(graph, *inputs(smaller))
    assert report.soft_deleted == ["tools.md"]
    assert {c["doc_id"] for c in graph.live_chunks()} == set(smaller)
    assert {f["doc_id"] for f in graph.live_facts()} == set(smaller)
    assert graph.counts().nodes["Document"] == 2
    # coming back to the inbox restores it
    back = sync_documents(graph, *inputs(CORPUS))
    assert back.written == ["tools.md"] and graph.counts().nodes["Document"] == 3


def test_operator_delete_undo_and_purge(graphs):
    graph, _ = graphs
    sync_documents(graph, *inputs(CORPUS))
    assert graph.soft_delete_documents(["tools.md"], by=OPERATOR) == 1
    # still in the inbox, but an operator's delete holds
    report = sync_documents(graph, *inputs(CORPUS))
    assert report.held_by_operator == ["tools.md"] and report.written == []
    assert "Git" not in {f["subject"] for f in graph.live_facts()}
    assert graph.restore_document("tools.md", timedelta(days=30))
    assert "Git" in {f["subject"] for f in graph.live_facts()}
    # a deletion older than the undo window cannot be undone and is purged
    long_ago = datetime.now(timezone.utc) - timedelta(days=31)
    before_total = graph.total_node_count()
    graph.soft_delete_documents(["tools.md"], by=OPERATOR, now=long_ago)
    assert not graph.restore_document("tools.md", timedelta(days=30))
    assert graph.purge_deleted(timedelta(days=30)) > 0
    assert graph.purge_deleted(timedelta(days=30)) == 0  # nothing left to purge
    assert graph.counts().nodes["Document"] == 2 and graph.total_node_count() < before_total
    # the operator's delete outlives the purge as an empty tombstone: the inbox copy stays out
    assert graph.document_states()["tools.md"]["deleted_by"] == OPERATOR
    report = sync_documents(graph, *inputs(CORPUS))
    assert report.held_by_operator == ["tools.md"] and report.written == []
    assert not graph.restore_document("tools.md", timedelta(days=365))


def test_tenants_never_see_each_other(graphs):
    a, b = graphs
    sync_documents(a, *inputs(CORPUS))
    other = {"rivers.txt": "Lyon is a city in France known for its cuisine."}
    sync_documents(b, *inputs(other))
    # every read method, from both sides
    assert set(a.document_states()) == set(CORPUS) and set(b.document_states()) == {"rivers.txt"}
    assert {c["doc_id"] for c in b.live_chunks()} == {"rivers.txt"}
    assert "Lyon" not in {f["subject"] for f in a.live_facts()}
    assert {f["subject"] for f in b.live_facts()} == {"Lyon"}
    assert "Danube" not in {r["entity"] for r in b.document_subgraph("rivers.txt")}
    assert b.counts().nodes["Document"] == 1 and a.counts().nodes["Document"] == 3
    # a's whole canonical listing (nodes with their properties, relationships) holds nothing of b's
    seen_by_a = a.fingerprint()
    assert any(f"'tenant_id': {a.tenant_id!r}" in line for line in seen_by_a)
    assert not any(repr(b.tenant_id) in line or "Lyon" in line for line in seen_by_a)
    # every write method: b's writes and deletes leave a untouched
    before = a.fingerprint()
    b.soft_delete_documents(["rivers.txt", "tools.md"], by=OPERATOR)
    assert not b.restore_document("tools.md", timedelta(days=30))
    b.purge_deleted(timedelta(days=0))
    b.delete_everything()
    assert a.fingerprint() == before


def test_a_failed_write_leaves_nothing_behind(graphs):
    graph, _ = graphs
    sync_documents(graph, *inputs(CORPUS))
    before = graph.fingerprint()
    docs, chunks = inputs({"new.txt": "Redis keeps its dataset in memory."})
    from datacreek_assets.graph.sync import build_document_rows

    rows = build_document_rows(docs[0], chunks["new.txt"])
    rows["chunks"][0]["props"]["text"] = {"nested": "maps are not valid property values"}
    with pytest.raises(neo4j.exceptions.CypherTypeError, match="Property values can only be of primitive types"):
        graph.replace_documents([rows])
    assert graph.fingerprint() == before  # the whole transaction rolled back


def test_cli_delete_document_and_undo(graphs, cli_env, datacreek):
    import subprocess

    graph, _ = graphs
    sync_documents(graph, *inputs(CORPUS))

    def run(*args):
        return subprocess.run([datacreek, "tenant", *args], env=cli_env, capture_output=True, text=True)

    deleted = run("delete-document", graph.tenant_id, "tools.md")
    assert deleted.returncode == 0, deleted.stderr
    assert "tools.md" not in {c["doc_id"] for c in graph.live_chunks()}
    again = run("delete-document", graph.tenant_id, "tools.md")
    assert again.returncode == 2 and "no live document" in again.stderr
    assert run("undo", graph.tenant_id, "tools.md").returncode == 0
    assert "tools.md" in {c["doc_id"] for c in graph.live_chunks()}
    assert run("undo", graph.tenant_id, "tools.md").returncode == 2
    assert run("delete-document", "../" + graph.tenant_id, "tools.md").returncode == 2


def test_purge_job_runs_over_registered_tenants(graphs, local_resources):
    from datacreek_assets.defs import build_definitions
    from datacreek_assets.streaming.events import document_events
    from datacreek_assets.streaming.windows import fold

    graph, _ = graphs
    sync_documents(graph, *inputs(CORPUS))
    graph.soft_delete_documents(["tools.md"], by=OPERATOR, now=datetime.now(timezone.utc) - timedelta(days=40))
    total_before = graph.total_node_count()
    hot = local_resources["hot_graph"].store()  # the hot layer holds a copy of the document's node too
    hot.create_scope(graph.tenant_id)
    tenant = graph.tenant_id
    hot.apply_window(fold(tenant, "w1", document_events(tenant, [
        {"chunk_id": "c1", "doc_id": "tools.md"}, {"chunk_id": "c2", "doc_id": "rivers.txt"}], [], [])))
    registry = local_resources["tenant_registry"].registry()
    registry.add(graph.tenant_id)
    try:
        job = build_definitions("local", None).resolve_job_def("purge_job")
        result = job.execute_in_process(resources=local_resources)
    finally:
        registry.remove(graph.tenant_id)
        registry.close()
    assert result.success
    assert "tools.md" not in {c["doc_id"] for c in graph.live_chunks()}
    assert graph.document_states()["tools.md"]["deleted_by"] == OPERATOR  # tombstone only
    assert graph.total_node_count() < total_before
    # the erasure's report, on the documents asset's page: a hash for the document, counts per store
    observed = [e.event_specific_data.asset_observation for e in result.all_events
                if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
    report = next(o for o in observed if o.asset_key == dg.AssetKey("raw_documents"))
    assert report.partition == graph.tenant_id and report.metadata["erasure"].value == "purge"
    assert "tools.md" not in str(report.metadata) and "| inbox files |" in report.metadata["erasure_report"].value
    assert report.metadata["erasure_hot_graph_nodes"].value == 1
    left = hot.graph(graph.tenant_id).ro_query("MATCH (c:Chunk) RETURN c.doc_id").result_set
    hot.drop_scope(graph.tenant_id)
    assert left == [["rivers.txt"]]


def test_reads_ignore_edges_that_cross_tenants(graphs):
    """Even if a bad write linked two tenants' nodes, neither tenant's reads would follow the link."""
    a, b = graphs
    sync_documents(a, *inputs(CORPUS))
    sync_documents(b, *inputs({"rivers.txt": "Lyon is a city in France known for its cuisine."}))
    before_a = (a.counts(), a.live_facts(), a.document_subgraph("rivers.txt"))
    before_b = (b.counts(), b.live_facts(), b.document_subgraph("rivers.txt"))
    # corrupt the data directly, bypassing the repository (tests only)
    _, summary, _ = a.driver.execute_query(
        "MATCH (c:Chunk {tenant_id: $a}), (e:Entity {tenant_id: $b}) "
        "MERGE (c)-[:MENTIONS]->(e) "
        "WITH e MATCH (f:Fact {tenant_id: $b}), (x:Entity {tenant_id: $a}) MERGE (f)-[:OBJECT]->(x) "
        "WITH f MATCH (c2:Chunk {tenant_id: $a}) MERGE (f)-[:SOURCE]->(c2)",
        a=a.tenant_id, b=b.tenant_id,
    )
    assert summary.counters.relationships_created >= 3  # the corruption really happened
    assert (a.counts(), a.live_facts(), a.document_subgraph("rivers.txt")) == before_a
    assert (b.counts(), b.live_facts(), b.document_subgraph("rivers.txt")) == before_b


def test_every_mention_lands_on_its_chunk_with_its_count(graphs):
    """The writer merges a chunk's mentions with the chunk. A mention naming a chunk written
    earlier, and a chunk of another document, still land; no chunk gets another's mentions."""
    graph, _ = graphs

    def doc(doc_id: str, mentions: dict[str, list[str]], extra: list[dict] = ()) -> dict:
        chunks = [{"doc_id": doc_id, "chunk_id": cid, "props": {"doc_id": doc_id, "position": i, "text": cid}}
                  for i, cid in enumerate(mentions)]
        names = sorted({n for ns in mentions.values() for n in ns} | {m["entity_id"] for m in extra})
        return {"doc_id": doc_id, "props": {"doc_id": doc_id}, "chunks": chunks, "next": [], "facts": [],
                "entities": [{"entity_id": n, "name": n, "type": "name"} for n in names],
                "mentions": [{"chunk_id": cid, "entity_id": n, "count": len(n)} for cid, ns in mentions.items()
                             for n in ns] + list(extra)}

    graph.replace_documents([doc("a.txt", {"a-0": ["x", "yy"], "a-1": [], "a-2": ["yy", "zzz"]})])
    late = {"chunk_id": "a-1", "entity_id": "late", "count": 4}  # a chunk of a.txt, named from b.txt
    b = doc("b.txt", {"b-0": ["x"]}, [late, {"chunk_id": "a-9", "entity_id": "x", "count": 1}])
    b["chunks"].append({"doc_id": "a.txt", "chunk_id": "a-9", "props": {"doc_id": "a.txt", "position": 9}})
    counters = graph.replace_documents([b], batch_size=1)
    assert counters["relationships_created"] == 5  # b-0's HAS_CHUNK and mention, the late one, a-9's two
    got = {(m["chunk_id"], m["entity_id"]) for m in graph.live_mentions()}
    assert got == {("a-0", "x"), ("a-0", "yy"), ("a-2", "yy"), ("a-2", "zzz"), ("b-0", "x"), ("a-1", "late"),
                   ("a-9", "x")}
    assert {c["chunk_id"] for c in graph.live_chunks(["a.txt"])} == {"a-0", "a-1", "a-2", "a-9"}
    counts = graph.driver.execute_query(
        "MATCH (c:Chunk {tenant_id: $t})-[m:MENTIONS]->(e:Entity {tenant_id: $t}) RETURN c.chunk_id, e.entity_id, m.count",
        t=graph.tenant_id).records
    assert all(count == len(entity) for _, entity, count in counts) and len(counts) == 7


def test_documents_written_one_per_transaction_make_the_graph_one_transaction_makes(graphs):
    """The writer commits documents in groups bounded by rows (``rows_per_transaction``): written
    one document per transaction, documents that share entities make the graph one transaction makes."""
    from datacreek_assets.graph.sync import build_document_rows
    from datacreek_assets.graph_store import _transaction_groups

    one, split = graphs
    texts = {"a.txt": "Neo4j stores graphs. The Danube flows through Vienna.",
             "b.txt": "Vienna hosts the IAEA. Neo4j runs on Java.",
             "c.txt": "The Danube reaches the Black Sea."}
    docs = [build_document_rows({"doc_id": d, "content_hash": d, "format": "txt", "size_bytes": len(t)},
                                [{"chunk_id": f"{d}-{i}", "position": i, "text": s, "n_tokens": 8}
                                 for i, s in enumerate(t.split(". "))]) for d, t in texts.items()]
    assert [len(g) for g in _transaction_groups(docs, 1)] == [1, 1, 1]  # each document alone
    counters = [one.replace_documents(docs), split.replace_documents(docs, rows_per_transaction=1)]
    assert counters[0]["nodes_created"] == counters[1]["nodes_created"] > len(docs)

    def state(graph) -> tuple:
        return (graph.counts(), sorted(map(sorted, (m.items() for m in graph.live_mentions()))),
                sorted(f["fact_id"] for f in graph.live_facts()))

    assert state(one) == state(split)


def test_odd_chunk_listings_are_merged_as_before_and_a_second_write_of_them_works(graphs):
    """The writer creates a group's chunks without looking them up (they were just deleted); a
    chunk listed twice, or whose doc_id property names another document, is merged instead, so
    it ends as before (properties united, later values winning) and the next write finds it."""
    graph, _ = graphs

    def doc() -> dict:
        chunks = [{"doc_id": "d.txt", "chunk_id": "twice", "props": {"doc_id": "d.txt", "position": 0, "a": 1}},
                  {"doc_id": "d.txt", "chunk_id": "twice", "props": {"doc_id": "d.txt", "position": 1, "b": 2}},
                  {"doc_id": "d.txt", "chunk_id": "astray", "props": {"doc_id": "other.txt", "position": 2}},
                  {"doc_id": "d.txt", "chunk_id": "plain", "props": {"doc_id": "d.txt", "position": 3}}]
        return {"doc_id": "d.txt", "props": {"doc_id": "d.txt"}, "chunks": chunks, "next": [], "facts": [],
                "entities": [{"entity_id": "e", "name": "e", "type": "name"}],
                "mentions": [{"chunk_id": cid, "entity_id": "e", "count": 1} for cid in ("twice", "astray", "plain")]}

    for _ in range(2):  # "astray" survives the first write's delete (its doc_id names another document)
        graph.replace_documents([doc()])
    rows = graph.driver.execute_query(
        "MATCH (:Document {tenant_id: $t, doc_id: 'd.txt'})-[:HAS_CHUNK]->(c:Chunk {tenant_id: $t}) "
        "OPTIONAL MATCH (c)-[m:MENTIONS]->(:Entity {tenant_id: $t}) RETURN c.chunk_id AS id, c.position AS position, "
        "c.a AS a, c.b AS b, count(m) AS mentions", t=graph.tenant_id).records
    got = {r["id"]: (r["position"], r["a"], r["b"], r["mentions"]) for r in rows}
    assert got == {"twice": (1, 1, 2, 1), "astray": (2, None, None, 1), "plain": (3, None, None, 1)}

