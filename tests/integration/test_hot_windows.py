"""Windows of graph events folded into the real FalkorDB: co-occurrence weights from the chunks,
idempotent under replay, a deleted or rewritten document's contribution gone, tenants apart."""

from dataclasses import replace

import pytest

from datacreek_assets.streaming.events import document_events
from datacreek_assets.streaming.windows import fold

pytestmark = pytest.mark.integration
TENANTS = ("hot-a", "hot-b")


def rows(doc_id: str, chunks: dict[str, list[str]]) -> tuple[list, list, list]:
    """Live rows as TenantGraph returns them: chunk -> the entities it mentions."""
    chunk_rows = [{"chunk_id": c, "doc_id": doc_id} for c in chunks]
    mentions = [{"chunk_id": c, "doc_id": doc_id, "entity_id": e, "entity": e.title()} for c, es in chunks.items()
                for e in es]
    facts = [{"fact_id": f"f-{c}", "doc_id": doc_id, "chunk_id": c, "subject": es[0], "predicate": "is",
              "object": es[-1]} for c, es in chunks.items()]
    return chunk_rows, mentions, facts


def weights(graph) -> dict[tuple[str, str], int]:
    result = graph.ro_query("MATCH (a:Entity)-[e:CO_OCCURS]->(b:Entity) RETURN a.entity_id, b.entity_id, e.weight")
    return {(a, b): w for a, b, w in result.result_set}


def snapshot(graph) -> list:
    nodes = graph.ro_query("MATCH (n) WHERE NOT n:Tenant RETURN labels(n)[0], properties(n)").result_set
    return sorted(repr(row) for row in nodes) + sorted(repr(w) for w in weights(graph).items())


@pytest.fixture
def hot(local_resources):
    store = local_resources["hot_graph"].store()
    for tenant in TENANTS:
        store.drop_scope(tenant)
        store.create_scope(tenant)
    yield store
    for tenant in TENANTS:
        store.drop_scope(tenant)


def test_windows_fold_into_weights_idempotently_and_deletes_take_their_contribution(hot):
    a, b = hot.graph("hot-a"), hot.graph("hot-b")
    first = document_events("hot-a", *rows("one.txt", {"c1": ["danube", "vienna", "budapest"],
                                                        "c2": ["danube", "vienna"]}))
    report = hot.apply_window(fold("hot-a", "w1", first))
    assert report["chunks"] == 2 and report["facts"] == 2
    expected = {("danube", "vienna"): 2, ("budapest", "danube"): 1, ("budapest", "vienna"): 1}
    assert weights(a) == expected
    once = snapshot(a)
    hot.apply_window(fold("hot-a", "w1", first))  # the same window again (a restart replays it)
    assert snapshot(a) == once

    # the same events split over two windows, the other tenant: the same graph, apart from hot-a's
    hot.apply_window(fold("hot-b", "w1", [replace(e, tenant_id="hot-b") for e in first[:4]]))
    hot.apply_window(fold("hot-b", "w2", [replace(e, tenant_id="hot-b") for e in first[4:]]))
    assert weights(b) == expected and snapshot(a) == once

    # a second document shares a pair: weights add up across documents
    hot.apply_window(fold("hot-a", "w2", document_events("hot-a", *rows("two.txt", {"c9": ["danube", "vienna"]}))))
    assert weights(a)[("danube", "vienna")] == 3

    # rewritten: one.txt now has a single chunk; its older chunks and their weight go
    hot.apply_window(fold("hot-a", "w3", document_events("hot-a", *rows("one.txt", {"c3": ["vienna", "linz"]}))))
    assert weights(a) == {("danube", "vienna"): 1, ("linz", "vienna"): 1}
    # deleted in a later window: only two.txt's edge is left; no entity without a chunk stays
    report = hot.apply_window(fold("hot-a", "w4", document_events("hot-a", [], [], [], deleted=["one.txt"])))
    assert report["deleted_documents"] == 1 and weights(a) == {("danube", "vienna"): 1}
    names = {row[0] for row in a.ro_query("MATCH (e:Entity) RETURN e.entity_id").result_set}
    assert names == {"danube", "vienna"}
    assert weights(b) == expected  # the other tenant's graph never moved


def test_a_delete_and_a_rewrite_inside_one_window_keep_only_what_came_last(hot):
    a = hot.graph("hot-a")
    written = document_events("hot-a", *rows("one.txt", {"c1": ["danube", "vienna"]}))
    gone = document_events("hot-a", [], [], [], deleted=["one.txt"])
    again = document_events("hot-a", *rows("one.txt", {"c2": ["rhine", "basel"]}))
    delta = fold("hot-a", "w1", written + gone + again)
    assert set(delta.chunks) == {"c2"} and delta.deleted_docs == set()
    hot.apply_window(delta)
    assert weights(a) == {("basel", "rhine"): 1}
    with pytest.raises(ValueError, match="hot-b"):
        fold("hot-a", "w1", [replace(e, tenant_id="hot-b") for e in written])


def test_events_read_before_a_newer_change_never_undo_it(hot):
    """A graph run reads a document (revision 5), a delete lands (revision 6) and publishes first,
    then the run publishes: whatever the windows and the order, the delete stays."""
    a = hot.graph("hot-a")
    stale = document_events("hot-a", *rows("one.txt", {"c1": ["danube", "vienna"]}), revisions={"one.txt": 5})
    gone = document_events("hot-a", [], [], [], deleted=["one.txt"], revisions={"one.txt": 6})
    for events in (gone + stale, stale + gone):  # inside one window, in either order
        delta = fold("hot-a", "w1", events)
        assert (delta.chunks, delta.deleted_docs, delta.revisions) == ({}, {"one.txt"}, {"one.txt": 6})
    hot.apply_window(fold("hot-a", "w1", gone))
    report = hot.apply_window(fold("hot-a", "w2", stale))  # the run's events in a later window
    assert report["stale_documents"] == 1 and report["chunks"] == 0
    assert weights(a) == {} and not a.ro_query("MATCH (c:Chunk) RETURN c").result_set
    assert a.ro_query("MATCH (d:Document) RETURN d.doc_id, d.revision, d.deleted").result_set == [["one.txt", 6, True]]
    # a newer state (an undo, revision 7) brings it back
    hot.apply_window(fold("hot-a", "w3", document_events("hot-a", *rows("one.txt", {"c1": ["danube", "vienna"]}),
                                                         revisions={"one.txt": 7})))
    assert weights(a) == {("danube", "vienna"): 1}
    # erasure takes its rows whatever its revision; the tombstone stays, and still outranks the old run
    assert hot.delete_document("hot-a", "one.txt") > 0
    assert not a.ro_query("MATCH (c:Chunk) RETURN c").result_set
    assert a.ro_query("MATCH (d:Document) RETURN d.revision, d.deleted").result_set == [[7, True]]
    assert hot.apply_window(fold("hot-a", "w5", stale))["stale_documents"] == 1 and weights(a) == {}
