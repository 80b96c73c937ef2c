"""Batched, UNWIND-based graph writer vs one transaction per row, same data, same Neo4j."""

from __future__ import annotations

import random
import statistics
import time

from neo4j._codec.packstream.v1 import Packer, _rust_pack

from bench.harness import Comparison
from datacreek_assets.local_services import services_up
from datacreek_assets.settings import LocalSettings
from resources.factory import build_resources

TENANT = "bench-writer"
_admin_cm = None


def synthetic_docs(n_docs: int, chunks_per_doc: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    vocabulary = [f"entity {i}" for i in range(400)]
    docs = []
    for d in range(n_docs):
        chunks, mentions, entities = [], [], {}
        for c in range(chunks_per_doc):
            chunk_id = f"d{d}-c{c}"
            chunks.append({"doc_id": f"doc{d}", "chunk_id": chunk_id,
                           "props": {"doc_id": f"doc{d}", "position": c, "text": "lorem ipsum " * 40, "n_tokens": 80}})
            for name in rng.sample(vocabulary, 3):
                entities[name] = {"entity_id": name, "name": name, "type": "name"}
                mentions.append({"chunk_id": chunk_id, "entity_id": name, "count": 1})
        docs.append({"doc_id": f"doc{d}", "props": {"doc_id": f"doc{d}", "signature": str(d)}, "chunks": chunks,
                     "next": [], "entities": list(entities.values()), "mentions": mentions, "facts": []})
    return docs


def rows(docs: list[dict]) -> int:
    return sum(1 + len(d["chunks"]) + len(d["entities"]) + len(d["mentions"]) for d in docs)


def comparisons(quick: bool = False) -> list[Comparison]:
    global _admin_cm
    settings = LocalSettings.from_env()
    services_up(settings, progress=lambda m: None, stream=False)
    _admin_cm = build_resources("local", settings)["graph_store"].admin()
    admin = _admin_cm.__enter__()
    admin.create_scope(TENANT)
    graph = admin.tenant(TENANT)
    docs = synthetic_docs(10 if quick else 100, 10)  # a 100-document tenant
    n = rows(docs)
    repeats = 1 if quick else 5  # the goal is a median of 5 alternating warm rounds

    written: list[tuple[int, float]] = []  # (graph elements, seconds) of each timed batched write

    def batched() -> int:
        start = time.perf_counter()
        counters = graph.replace_documents(docs)
        written.append((counters["nodes_created"] + counters["relationships_created"], time.perf_counter() - start))
        return n

    def elements_per_s() -> str:
        rates = sorted(e / s for e, s in written[-repeats:])
        return (f"batched writer: {statistics.median(rates):,.0f} graph elements/s (nodes + relationships "
                f"created; median, spread {rates[0]:,.0f}-{rates[-1]:,.0f}); Neo4j Community 5.26 on 127.0.0.1, "
                "both write documents, chunks, entities, mentions into an empty tenant; one warm-up round each first; "
                f"messages packed in {'Rust (neo4j-rust-ext)' if _rust_pack else 'Python'}")

    def one_by_one() -> int:
        graph.merge_rows_one_by_one(docs)
        return n

    def batched_rust_packer() -> int:
        graph.replace_documents(docs)
        return n

    def batched_python_packer() -> int:
        # the same write with the driver's pure-Python packer, as without neo4j-rust-ext (results
        # are decoded by the same unpacker on both sides)
        rust = Packer.__dict__["_pack"]
        Packer._pack = Packer._py_pack
        try:
            graph.replace_documents(docs)
        finally:
            Packer._pack = rust
        return n

    result = [Comparison(
        name=f"graph writer: UNWIND batches vs 1 tx/row ({n} rows)",
        candidate=batched, baseline=one_by_one, unit="rows", repeats=repeats, warmup=0 if quick else 1,
        setup=graph.delete_everything, notes=elements_per_s,
    )]
    if _rust_pack:
        result.append(Comparison(
            name=f"graph writer: messages packed in Rust vs Python ({n} rows)",
            candidate=batched_rust_packer, baseline=batched_python_packer, unit="rows",
            repeats=repeats, warmup=0 if quick else 1, setup=graph.delete_everything,
            notes="neo4j-rust-ext's packer against the driver's own; the same batched write",
        ))
    return result


def teardown() -> None:
    if _admin_cm is not None:
        _admin_cm.__exit__(None, None, None)
