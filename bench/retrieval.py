"""Grounding a served request: embed the question (MiniLM, one thread) and find the tenant's top 3
chunks.

Candidate: `RetrievalIndex.search`, exact inner product over every chunk vector.
Baseline: an approximate nearest-neighbour graph (pynndescent, the ANN library already in the
stack through UMAP) queried for the same top 3. Same queries, same vectors (20,000 chunks, a large
tenant); the unit is "queries". The notes give what a request pays in total (embedding + search,
p50/p99 in ms) and the ANN's recall against the exact answer. The ANN is faster per query, but both
are small next to embedding the question, and only exact search is always right: so the index is
exact.
"""

from __future__ import annotations

import time

import numpy as np

from bench.harness import Comparison

K = 3


def comparisons(quick: bool = False) -> list[Comparison]:
    from pynndescent import NNDescent

    from datacreek_assets.embeddings.embedder import embed_one
    from datacreek_assets.retrieval.index import RetrievalIndex

    rng = np.random.default_rng(0)
    n, queries = (2_000, 50) if quick else (20_000, 200)
    centers = rng.normal(size=(200, 384))
    vectors = centers[rng.integers(0, 200, n)] + rng.normal(0, 0.6, (n, 384))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    index = RetrievalIndex("bench", [f"c{i}" for i in range(n)], ["d"] * n, [""] * n, vectors)
    probes = vectors[rng.integers(0, n, queries)] + rng.normal(0, 0.02, (queries, 384)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    ann = NNDescent(vectors, metric="dot", n_neighbors=15, random_state=0, n_jobs=1)
    ann.prepare()
    ann.query(probes[:2], k=K)  # compile outside the timing

    exact_ids = [[int(p.chunk_id[1:]) for p in index.search(q, K)] for q in probes]
    ann_ids = ann.query(probes, k=K)[0]
    recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(ann_ids, exact_ids)])

    questions = [f"Which function of module {i} returns the value number {i}?" for i in range(queries)]
    embed_one(questions[0])
    grounding = []
    for q in questions:
        started = time.perf_counter()
        index.search(embed_one(q), K)
        grounding.append(time.perf_counter() - started)

    def exact() -> int:
        for q in probes:
            index.search(q, K)
        return len(probes)

    def approximate() -> int:
        for q in probes:
            ann.query(q[None, :], k=K)
        return len(probes)

    notes = (f"{n} chunks; ANN recall@{K} vs exact {recall:.3f}; a request's grounding (embed + exact search) "
             f"p50 {np.percentile(grounding, 50) * 1000:.1f} ms, p99 {np.percentile(grounding, 99) * 1000:.1f} ms")
    return [Comparison(f"retrieval: exact top-{K} of {n} vs ANN graph", exact, approximate, unit="queries",
                       repeats=1 if quick else 3, notes=notes)]
