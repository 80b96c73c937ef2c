"""The graph writer's transaction groups: whole documents, in order, bounded by rows."""

from datacreek_assets.graph_store import _document_rows, _transaction_groups


def doc(doc_id: str, chunks: int, mentions: int = 0) -> dict:
    return {"doc_id": doc_id, "chunks": [{"chunk_id": f"{doc_id}-{i}"} for i in range(chunks)], "next": [],
            "entities": [{"entity_id": f"e{i}"} for i in range(mentions)],
            "mentions": [{"chunk_id": f"{doc_id}-0", "entity_id": f"e{i}"} for i in range(mentions)], "facts": []}


def test_documents_are_grouped_whole_in_order_within_the_row_bound():
    docs = [doc("a", 3, 2), doc("b", 1), doc("huge", 50, 10), doc("c", 2), doc("d", 2)]
    assert [_document_rows(d) for d in docs] == [8, 2, 71, 3, 3]
    groups = list(_transaction_groups(docs, 10))
    assert [[d["doc_id"] for d in g] for g in groups] == [["a", "b"], ["huge"], ["c", "d"]]
    assert all(sum(map(_document_rows, g)) <= 10 for g in groups if len(g) > 1)  # only a lone document exceeds it
    assert [[d["doc_id"] for d in g] for g in _transaction_groups(docs, 1)] == [[d["doc_id"]] for d in docs]
    assert list(_transaction_groups(docs, 10_000)) == [docs]
    assert list(_transaction_groups([], 10)) == []


def test_a_document_without_rows_still_counts_so_no_group_is_unbounded():
    empty = [doc(f"e{i}", 0) for i in range(5)]
    assert [len(g) for g in _transaction_groups(empty, 2)] == [2, 2, 1]
