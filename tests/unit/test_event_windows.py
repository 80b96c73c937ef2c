"""A firing's writable events: a document upsert waits for the row events its publish counted."""

import pytest

from datacreek_assets.streaming.events import ROWS_ID, EventLogError, GraphEvent, document_events
from datacreek_assets.streaming.windows import writable_prefix

AT = "2026-12-07T00:00:00+00:00"


def publish(doc_id: str, chunks: int, revision: int = 0) -> list[GraphEvent]:
    """A document with ``chunks`` chunks, each mentioning one entity: an upsert and 2 × chunks rows."""
    chunk_rows = [{"chunk_id": f"{doc_id}:{i}", "doc_id": doc_id} for i in range(chunks)]
    mentions = [{"chunk_id": f"{doc_id}:{i}", "doc_id": doc_id, "entity_id": f"e{i}", "entity": f"E{i}"}
                for i in range(chunks)]
    return document_events("acme", chunk_rows, mentions, [], at=None, revisions={doc_id: revision})


def test_the_upsert_counts_its_document_s_rows():
    events = publish("a.txt", 3) + document_events("acme", [], [], [], documents=["empty.txt"])
    upserts = {e.doc_id: e.ids for e in events if e.kind == "document"}
    assert upserts == {"a.txt": {ROWS_ID: "6"}, "empty.txt": {ROWS_ID: "0"}}


def test_whole_publishes_are_all_writable():
    events = publish("a.txt", 2) + publish("b.txt", 1)
    assert writable_prefix(events) == len(events)


def test_one_publish_of_several_documents_becomes_writable_a_document_at_a_time():
    rows = [{"chunk_id": f"{d}:0", "doc_id": d} for d in ("a.txt", "b.txt")]
    events = document_events("acme", rows, [], [])
    assert [(e.doc_id, e.kind) for e in events] == [("a.txt", "document"), ("a.txt", "chunk"),
                                                     ("b.txt", "document"), ("b.txt", "chunk")]
    assert [writable_prefix(events[:n]) for n in range(1, 5)] == [0, 2, 2, 4]


def test_a_document_cut_short_waits_with_everything_after_it():
    a, b = publish("a.txt", 2), publish("b.txt", 1)
    assert writable_prefix(a + b[:2]) == len(a)  # b's upsert waits for its last row
    assert writable_prefix(a[:3] + b) == 0  # a waits, and b behind it keeps the order


def test_a_newer_state_replaces_the_one_waited_for():
    old, new = publish("a.txt", 2, revision=1), publish("a.txt", 1, revision=2)
    assert writable_prefix(old[:2] + new) == len(old[:2] + new)  # the old upsert's missing rows never come
    assert writable_prefix(old[:2] + new[:2]) == 2  # the new one waits for its own
    gone = document_events("acme", [], [], [], deleted=["a.txt"], revisions={"a.txt": 3})
    assert writable_prefix(old[:2] + gone) == 3


def test_rows_of_another_revision_do_not_count_and_a_stale_state_does_not_end_the_wait():
    new = publish("a.txt", 1, revision=2)
    stale = publish("a.txt", 1, revision=1)
    assert writable_prefix(new[:2] + stale[1:]) == 0  # a stale row is not one of the new upsert's
    assert writable_prefix(new[:2] + stale[:1]) == 0  # nor does the stale upsert replace it
    assert writable_prefix(new[:2] + stale + new[2:]) == len(new) + len(stale)


def test_events_written_before_the_count_existed_are_writable():
    upsert = GraphEvent("acme", "a.txt", "document", "upsert", AT)  # no rows: an older publisher's
    chunk = GraphEvent("acme", "a.txt", "chunk", "upsert", AT, {"chunk_id": "a.txt:0"})
    assert writable_prefix([upsert]) == 1 and writable_prefix([upsert, chunk]) == 2


@pytest.mark.parametrize("kind, op, ids", [
    ("document", "upsert", {ROWS_ID: "-1"}), ("document", "upsert", {ROWS_ID: "²"}),
    ("document", "upsert", {ROWS_ID: "1" * 10}), ("document", "upsert", {ROWS_ID: "9" * 4301}),
    ("document", "upsert", {ROWS_ID: "3", "x": "1"}), ("document", "delete", {ROWS_ID: "0"}),
    ("chunk", "upsert", {"chunk_id": "c", ROWS_ID: "1"}),
])
def test_a_count_anywhere_else_or_not_a_count_is_refused(kind, op, ids):
    with pytest.raises(EventLogError):
        GraphEvent("acme", "a.txt", kind, op, AT, ids)
