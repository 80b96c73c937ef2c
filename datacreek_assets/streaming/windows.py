"""One tenant's 30 s window of graph events, folded into one delta for its FalkorDB hot graph
(``HotGraphStore.apply_window`` writes it: the Cypher lives in the repository).

The hot graph keeps chunks, the entities they mention and fact hyperedges, and derives from them
the co-occurrence edges between entities: an edge's weight is the number of live chunks that
mention both. A window upserts its chunks and mentions, removes its deleted documents, and then
recomputes the weight of every pair it touched from the chunks themselves (SET, never +=). So
applying a window twice, or replaying events after a restart, gives the same graph, and a deleted
document's contribution goes with its chunks. Every write records the window that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from datacreek_assets.streaming.events import ROWS_ID, GraphEvent

WINDOW_SECONDS = 30
# the stream job writes an open window's events so far this often: an event is queryable within
# about this, not after the window's 30 s (measured in bench/: the freshness p95)
EARLY_FIRE_S = 5


def window_id(start_ms: int) -> str:
    """A window's id: its start, UTC, to the second (ids sort as the windows do)."""
    return datetime.fromtimestamp(start_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_of(at: datetime) -> str:
    """The id of the window a moment falls in."""
    ms = int(at.timestamp() * 1000)
    return window_id(ms - ms % (WINDOW_SECONDS * 1000))


@dataclass
class WindowDelta:
    tenant_id: str
    window_id: str  # the window's start (``window_id``)
    chunks: dict[str, str] = field(default_factory=dict)  # chunk_id -> doc_id
    mentions: set[tuple[str, str, str]] = field(default_factory=set)  # (chunk_id, entity_id, name)
    facts: dict[str, dict] = field(default_factory=dict)  # fact_id -> the fact
    cleared_docs: set[str] = field(default_factory=set)  # deleted or rewritten: older rows go first
    deleted_docs: set[str] = field(default_factory=set)
    revisions: dict[str, int] = field(default_factory=dict)  # doc_id -> the newest revision its events carry

    def drop_rows(self, doc_ids: set[str]) -> None:
        self.chunks = {c: d for c, d in self.chunks.items() if d not in doc_ids}
        self.mentions = {m for m in self.mentions if m[0] in self.chunks}
        self.facts = {f: fact for f, fact in self.facts.items() if fact["doc_id"] not in doc_ids}

    def without(self, doc_ids: set[str]) -> None:
        """Leave out these documents: the hot graph already holds a newer state of them."""
        self.drop_rows(doc_ids)
        self.cleared_docs -= doc_ids
        self.deleted_docs -= doc_ids
        self.revisions = {d: r for d, r in self.revisions.items() if d not in doc_ids}


def writable_prefix(events: list[GraphEvent]) -> int:
    """How many of a firing's events, from the first, can be written now: all of them up to the first
    document upsert whose row events (its ``rows`` count, of its own revision) have not all arrived.
    Written before its rows, the upsert would clear the document from the hot graph until a later
    firing brings them (seen in CI: a curator's decision republished a document and a query found
    none of its facts). A newer state of the document (a document event of the same or a newer
    revision) ends the wait; an older one is stale, as ``fold`` has it."""
    missing: dict[int, int] = {}  # a waiting upsert's index -> its rows still to come
    waiting: dict[str, tuple[int, int]] = {}  # doc_id -> (the index of its waiting upsert, its revision)
    for i, event in enumerate(events):
        at, revision = waiting.get(event.doc_id, (None, -1))
        if event.kind == "document":
            if event.revision < revision:
                continue
            if at is not None:
                missing.pop(at)
                del waiting[event.doc_id]
            rows = int(event.ids.get(ROWS_ID, "0"))
            if event.op == "upsert" and rows:
                waiting[event.doc_id], missing[i] = (i, event.revision), rows
        elif at is not None and event.revision == revision:
            missing[at] -= 1
            if not missing[at]:
                del missing[at], waiting[event.doc_id]
    return min(missing, default=len(events))


def fold(tenant_id: str, window_id: str, events: list[GraphEvent]) -> WindowDelta:
    """The window's events, in their order, as one delta. A document event (a delete, or the
    upsert that starts a rewritten document's rows) drops the document's earlier rows, in this
    window and in the hot graph. An event of an older revision than one already seen for its
    document is stale (read before a change the newer events tell) and left out."""
    delta = WindowDelta(tenant_id, window_id)
    with_rows: set[str] = set()  # documents with rows in the delta: only theirs are worth dropping
    for event in events:
        if event.tenant_id != tenant_id:
            raise ValueError(f"event of tenant {event.tenant_id!r} in a window of {tenant_id!r}")
        doc_id, ids = event.doc_id, event.ids
        seen = delta.revisions.get(doc_id, event.revision)
        if event.revision < seen:
            continue
        delta.revisions[doc_id] = event.revision
        if event.kind == "document" or event.revision > seen:  # a new state: the older rows go
            if doc_id in with_rows:
                delta.drop_rows({doc_id})
                with_rows.discard(doc_id)
            delta.deleted_docs.discard(doc_id)
        if event.kind == "document":
            delta.cleared_docs.add(doc_id)
            if event.op == "delete":
                delta.deleted_docs.add(doc_id)
        else:
            with_rows.add(doc_id)
        if event.kind == "chunk":
            delta.chunks[ids["chunk_id"]] = doc_id
        elif event.kind == "mention":
            delta.chunks.setdefault(ids["chunk_id"], doc_id)
            delta.mentions.add((ids["chunk_id"], ids["entity_id"], ids["entity"]))
        elif event.kind == "fact":
            delta.facts[ids["fact_id"]] = {**ids, "doc_id": doc_id}
    return delta
