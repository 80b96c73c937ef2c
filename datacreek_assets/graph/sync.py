"""Incremental sync of a tenant's chunks into its knowledge graph.

A document's *signature* is the SHA-256 of the extractor version, its content
hash and the ids of the chunks it kept after tenant-wide de-duplication. Only documents whose
signature changed are rewritten (their old subgraph is replaced in the same
transaction); documents gone from the inbox are soft-deleted; documents an
operator deleted stay deleted until `undo`, even if still in the inbox.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from datacreek_assets.graph.extraction import EXTRACTOR_VERSION, extract
from datacreek_assets.graph_store import TenantGraph

OPERATOR = "operator"
INBOX = "inbox"


@dataclass
class SyncReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    soft_deleted: list[str] = field(default_factory=list)
    held_by_operator: list[str] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    facts: int = 0
    entities: int = 0


def document_signature(content_hash: str, chunk_ids: list[str]) -> str:
    return hashlib.sha256("\n".join([EXTRACTOR_VERSION, content_hash, *chunk_ids]).encode()).hexdigest()


def build_document_rows(doc: dict, chunks: list[dict]) -> dict:
    """The whole subgraph of one document. ``doc``: {doc_id, content_hash, format, size_bytes};
    ``chunks``: [{chunk_id, position, text, n_tokens}] in order."""
    chunk_rows, mentions, facts = [], [], []
    entities: dict[str, dict] = {}
    stated: set[tuple[str, str, str]] = set()  # a relation the document states is one fact (its first)
    for chunk in chunks:
        chunk_rows.append({
            "doc_id": doc["doc_id"],
            "chunk_id": chunk["chunk_id"],
            "props": {"doc_id": doc["doc_id"], "position": chunk["position"], "text": chunk["text"],
                      "n_tokens": chunk["n_tokens"]},
        })
        found, chunk_facts = extract(chunk["text"])
        counts = Counter(e.entity_id for e in found)
        for e in found:
            entities.setdefault(e.entity_id, {"entity_id": e.entity_id, "name": e.name, "type": e.type})
        for entity_id, n in counts.items():
            mentions.append({"chunk_id": chunk["chunk_id"], "entity_id": entity_id, "count": n})
        for f in chunk_facts:
            # chunks overlap: the sentence at a boundary is read twice, and would be two facts
            if (triple := (f.subject.entity_id, f.predicate, f.object.entity_id)) in stated:
                continue
            stated.add(triple)
            for e in (f.subject, f.object):
                entities.setdefault(e.entity_id, {"entity_id": e.entity_id, "name": e.name, "type": e.type})
            facts.append({
                "fact_id": f.fact_id(doc["doc_id"], chunk["chunk_id"]),
                "doc_id": doc["doc_id"],
                "chunk_id": chunk["chunk_id"],
                "subject": f.subject.entity_id,
                "predicate": f.predicate,
                "object": f.object.entity_id,
                "sentence": f.sentence,
            })
    ids = [c["chunk_id"] for c in chunks]
    return {
        "doc_id": doc["doc_id"],
        "props": {
            "doc_id": doc["doc_id"],
            "content_hash": doc["content_hash"],
            "signature": document_signature(doc["content_hash"], ids),
            "format": doc["format"],
            "size_bytes": doc["size_bytes"],
            "n_chunks": len(chunks),
        },
        "chunks": chunk_rows,
        "next": list(zip(ids, ids[1:])),
        "entities": list(entities.values()),
        "mentions": mentions,
        "facts": facts,
    }


def sync_documents(graph: TenantGraph, docs: list[dict], chunks_by_doc: dict[str, list[dict]]) -> SyncReport:
    report = SyncReport()
    states = graph.document_states()
    to_write = []
    present = set()
    for doc in docs:
        doc_id = doc["doc_id"]
        present.add(doc_id)
        chunks = chunks_by_doc.get(doc_id, [])
        signature = document_signature(doc["content_hash"], [c["chunk_id"] for c in chunks])
        state = states.get(doc_id)
        if state and state["deleted_by"] == OPERATOR:
            report.held_by_operator.append(doc_id)
            continue
        if state and state["signature"] == signature and state["deleted_at"] is None:
            report.unchanged.append(doc_id)
            continue
        to_write.append(build_document_rows(doc, chunks))
    if to_write:
        report.counters += graph.replace_documents(to_write)
        report.written = [d["doc_id"] for d in to_write]
        report.facts = sum(len(d["facts"]) for d in to_write)
        report.entities = len({e["entity_id"] for d in to_write for e in d["entities"]})
    gone = sorted(doc_id for doc_id, st in states.items() if doc_id not in present and st["deleted_at"] is None)
    if gone:
        graph.soft_delete_documents(gone, by=INBOX)
        report.soft_deleted = gone
    return report
