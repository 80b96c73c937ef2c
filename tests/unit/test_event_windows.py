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


def test_events_written_before_the_count_existed_are_writable():
    upsert = GraphEvent("acme", "a.txt", "document", "upsert", AT)  # no rows: an older publisher's
    assert writable_prefix([upsert]) == 1


@pytest.mark.parametrize("kind, op, ids", [
    ("document", "upsert", {ROWS_ID: "-1"}), ("document", "upsert", {ROWS_ID: "²"}),
    ("document", "upsert", {ROWS_ID: "3", "x": "1"}), ("document", "delete", {ROWS_ID: "0"}),
    ("chunk", "upsert", {"chunk_id": "c", ROWS_ID: "1"}),
])
def test_a_count_anywhere_else_or_not_a_count_is_refused(kind, op, ids):
    with pytest.raises(EventLogError):
        GraphEvent("acme", "a.txt", kind, op, AT, ids)
