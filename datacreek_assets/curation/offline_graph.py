"""A corpus's review inputs built in process, without Neo4j: the rows ``refresh_queue`` reads from
the graph (``review_facts``, ``live_mentions``, ``fact_pairs``, the chunks' texts), made by the
same functions the ingest and graph assets call (parse, chunk, deduplicate, screen, extract). For
the queue's benchmarks and tests on the demo corpus, where a Neo4j would only add minutes."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class ReviewInputs:
    facts: list[dict]
    mentions: list[dict]
    fact_pairs: set
    chunk_texts: dict[str, str]


def demo_review_inputs(max_docs: int = 40) -> ReviewInputs:
    """The demo corpus (as `datacreek demo` writes it) through raw_documents, parsed_chunks and
    knowledge_graph's functions; entities and facts merged by id, as the graph merges them."""
    from datacreek_assets.defs.ingest.assets import ChunkingConfig
    from datacreek_assets.demo_corpus import write_demo_corpus
    from datacreek_assets.graph.sync import build_document_rows
    from datacreek_assets.ingest.chunking import chunk_text, drop_exact_duplicates
    from datacreek_assets.ingest.parsing import DEFAULT_MAX_BYTES, ParsedDocument, parse_document
    from datacreek_assets.ingest.screening import screen_text
    from datacreek_assets.object_store import LocalObjectStore, TenantObjectStore

    parsed = []
    with tempfile.TemporaryDirectory() as root:
        store = TenantObjectStore(LocalObjectStore(root), "demo")
        write_demo_corpus(store, max_docs=max_docs)
        for key in store.list("inbox"):
            if store.size(key) <= DEFAULT_MAX_BYTES:
                result = parse_document(key.removeprefix("inbox/"), store.get(key), DEFAULT_MAX_BYTES)
                if isinstance(result, ParsedDocument):
                    parsed.append(result)
    chunking = ChunkingConfig()  # parsed_chunks' defaults
    unique, _ = drop_exact_duplicates([c for doc in parsed for c in chunk_text(doc.doc_id, doc.text, chunking.max_tokens,
                                                                               chunking.overlap_tokens)])
    chunks_by_doc: dict[str, list[dict]] = {}
    for c in unique:
        if not screen_text(c.text):
            chunks_by_doc.setdefault(c.doc_id, []).append({"chunk_id": c.chunk_id, "doc_id": c.doc_id,
                                                           "position": c.position, "text": c.text,
                                                           "n_tokens": c.n_tokens})
    rows = [build_document_rows({"doc_id": d.doc_id, "content_hash": d.content_hash, "format": d.format,
                                 "size_bytes": d.size_bytes}, chunks_by_doc.get(d.doc_id, [])) for d in parsed]
    entities = {e["entity_id"]: e for r in rows for e in r["entities"]}
    texts = {c["chunk_id"]: c["props"]["text"] for r in rows for c in r["chunks"]}
    doc_of = {c["chunk_id"]: c["doc_id"] for r in rows for c in r["chunks"]}
    merged = {f["fact_id"]: f for r in rows for f in r["facts"]}
    facts = [{"fact_id": f["fact_id"], "subject_id": f["subject"], "subject": entities[f["subject"]]["name"],
              "predicate": f["predicate"], "object_id": f["object"], "object": entities[f["object"]]["name"],
              "sentence": f["sentence"], "chunk_id": f["chunk_id"], "chunk_text": texts[f["chunk_id"]],
              "doc_id": f["doc_id"], "version": 0, "confirmed": False} for _, f in sorted(merged.items())]
    mentions = sorted(({"chunk_id": m["chunk_id"], "doc_id": doc_of[m["chunk_id"]], "entity_id": m["entity_id"],
                        "entity": entities[m["entity_id"]]["name"]} for r in rows for m in r["mentions"]),
                      key=lambda m: (m["chunk_id"], m["entity_id"]))
    return ReviewInputs(facts, mentions, {(f["subject_id"], f["object_id"]) for f in facts}, texts)
