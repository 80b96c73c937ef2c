"""Grounding a served request: embed the question (MiniLM, one thread) and find the tenant's top 3
chunks.

1. The question encoder, on the demo corpus and its 109 hand-written questions. Candidate:
   `embed_question` (int8 linear layers, per-row activation scales, `embeddings/int8.py`, where
   this CPU's int8 products are exact; else fp32, and the ratio is ~1).
   Baseline: the same question through the fp32 encoder the chunks are embedded with. The notes
   give a request's grounding (embed + exact search), p50/p99 in ms, on an idle machine and with
   the other core busy (as when a pool replica is decoding), the cosine of the int8 to the fp32
   vectors, how often both find the same top passage, and how often the top 3 hold the answer.
2. The search. Candidate: `RetrievalIndex.search`, exact inner product over every chunk vector.
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
    return [question_encoder(quick), search(quick)]


def question_encoder(quick: bool) -> Comparison:
    import json
    import subprocess
    import sys
    from importlib import resources

    from bench.embeddings import corpus_texts
    from datacreek_assets.embeddings.embedder import embed_question, embed_texts, question_encoder_precision
    from datacreek_assets.retrieval.index import RetrievalIndex

    texts = corpus_texts(60 if quick else 240)
    index = RetrievalIndex("bench", [f"c{i}" for i in range(len(texts))], ["d"] * len(texts), texts, embed_texts(texts))
    rows = [json.loads(line) for line in
            resources.files("datacreek_assets").joinpath("demo_questions.jsonl").read_text().splitlines() if line]
    questions = [r["question"] for r in rows][: 30 if quick else None]
    encoders = {"served": embed_question, "fp32": lambda q: embed_texts([q])[0]}
    vectors = {name: [encode(q) for q in questions] for name, encode in encoders.items()}  # also loads both
    found = {name: [index.search(v, K) for v in vs] for name, vs in vectors.items()}
    cosines = [float(a @ b) for a, b in zip(vectors["served"], vectors["fp32"])]
    same_top = np.mean([a[0].chunk_id == b[0].chunk_id for a, b in zip(found["served"], found["fp32"])])
    answered = {name: np.mean([any(r["answer"].lower() in p.text.lower() for p in ps) for r, ps in zip(rows, fs)])
                for name, fs in found.items()}
    latencies: dict[str, dict[str, list[float]]] = {name: {"idle": [], "busy": []} for name in encoders}

    def grounding(name: str) -> int:
        encode = encoders[name]
        for load in ("idle", "busy"):
            spinner = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None)
            try:
                for q in questions:
                    started = time.perf_counter()
                    index.search(encode(q), K)
                    latencies[name][load].append(time.perf_counter() - started)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
        return 2 * len(questions)

    def notes() -> str:
        def pct(values: list[float]) -> str:
            return f"p50 {np.percentile(values, 50) * 1000:.1f}/p99 {np.percentile(values, 99) * 1000:.1f} ms"

        spent = "; ".join(f"{name} idle {pct(v['idle'])}, other core busy {pct(v['busy'])}"
                          for name, v in latencies.items())
        return (f"served encoder: {question_encoder_precision()}; {len(questions)} hand-written questions over "
                f"{len(texts)} demo chunks; grounding (embed + search): "
                f"{spent}; cosine served to fp32 min {min(cosines):.4f} mean {np.mean(cosines):.4f}; same top passage "
                f"{same_top:.3f}; answer in the top {K}: served {answered['served']:.3f}, fp32 {answered['fp32']:.3f}")

    return Comparison("retrieval: served question encoder vs fp32 (grounding a request)",
                      lambda: grounding("served"), lambda: grounding("fp32"), unit="questions",
                      repeats=1 if quick else 3, notes=notes)


def search(quick: bool) -> Comparison:
    from pynndescent import NNDescent

    from datacreek_assets.embeddings.embedder import embed_question
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
    embed_question(questions[0])
    grounding = []
    for q in questions:
        started = time.perf_counter()
        index.search(embed_question(q), K)
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
    return Comparison(f"retrieval: exact top-{K} of {n} vs ANN graph", exact, approximate, unit="queries",
                      repeats=1 if quick else 3, notes=notes)
