"""Grounding a served request: embed the question (MiniLM, one thread) and find the tenant's top 3
chunks.

1. The question encoder, on the demo corpus and its 109 hand-written questions. Candidate:
   `question_encoder.embed_question`, as served: one sequence's forward written out, with int8
   linear layers where this CPU has exact int8 products in hardware, else float16 weights (fbgemm),
   else fp32. Baseline: the same question through transformers' fp32 BertModel (`embed_texts`);
   the chunks are embedded as `chunk_embeddings` does (bf16 where the CPU has AMX, else
   fp32). The notes also time the written-out forward in fp32 ("fp32 lean"; one round, after the
   alternated ones), which separates what the forward saves from what the weights' precision saves. The notes
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
3. The question's words. Candidate: the search as served, the cosine plus the question's BM25
   scores (`retrieval/lexical.py`, LEXICAL_WEIGHT of the best chunk's); baseline: the vectors
   alone. On the demo chunks the notes give how often the answer is in the top 1 and top 3 for
   each, on the 109 hand-written questions; the timing is the search alone over 20,000 chunks (the
   demo's texts repeated, random vectors), what BM25 adds to a request.
4. The sources. Issue 16 asks for the hot graph's neighbourhood of the question's entities as a
   second source next to the vectors. Its chunks are those naming the entities the question names
   (n-grams of the question matched to entity ids, as `graph/extraction.py` writes the mentions
   the stream copies into the hot graph), weighted by how rare each entity is, plus those naming
   their strongest co-occurring neighbours. The notes give how often the answer is in the top 3
   for the vectors alone, the graph alone and four ways of combining them, on the same 109
   hand-written questions; the timing (candidate: vectors fused with the graph by reciprocal rank;
   baseline: vectors alone) is the ranking only, the graph held in memory.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from bench.harness import Comparison

K = 3


def comparisons(quick: bool = False) -> Iterator[Comparison]:
    # Each is prepared just before it runs (the harness iterates): timed after the search's
    # preparation (an ANN over 20,000 vectors, 200 groundings with BM25), the encoder's p99 with
    # the other core busy read 160 to 215 ms, against 14 to 17 ms timed before it (2026-12-07, the
    # cause not isolated). A router's process holds the tenant's index and the encoder, no ANN.
    yield question_encoder(quick)
    yield search(quick)
    yield question_words(quick)
    yield sources(quick)


def demo_index_and_questions(quick: bool):
    """(texts, index, rows): the demo chunks' index (vectors as chunk_embeddings computes them) and
    the hand-written questions ({"question", "answer", ...} rows)."""
    import json
    from importlib import resources

    from bench.embeddings import corpus_texts
    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.retrieval.index import RetrievalIndex

    texts = corpus_texts(60 if quick else 240)
    index = RetrievalIndex("bench", [f"c{i}" for i in range(len(texts))], ["d"] * len(texts), texts,
                           embed_texts(texts, precision="auto"))
    rows = [json.loads(line) for line in
            resources.files("datacreek_assets").joinpath("demo_questions.jsonl").read_text().splitlines() if line]
    return texts, index, rows[: 30 if quick else None]


def question_encoder(quick: bool) -> Comparison:
    import subprocess
    import sys

    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.embeddings.question_encoder import embed_question, question_encoder_precision

    texts, index, rows = demo_index_and_questions(quick)
    questions = [r["question"] for r in rows]
    encoders = {"served": embed_question, "fp32": lambda q: embed_texts([q])[0],
                "fp32 lean": lambda q: embed_question(q, precision="fp32")}
    vectors = {name: [encode(q) for q in questions] for name, encode in encoders.items()}  # also loads each
    found = {name: [index.search(v, K, question=q) for q, v in zip(questions, vs)] for name, vs in vectors.items()}
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
                    index.search(encode(q), K, question=q)
                    latencies[name][load].append(time.perf_counter() - started)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
        return 2 * len(questions)

    def notes() -> str:
        grounding("fp32 lean")

        def pct(values: list[float]) -> str:
            return f"p50 {np.percentile(values, 50) * 1000:.1f}/p99 {np.percentile(values, 99) * 1000:.1f} ms"

        spent = "; ".join(f"{name} idle {pct(v['idle'])}, other core busy {pct(v['busy'])}"
                          for name, v in latencies.items() if v["idle"])
        return (f"served encoder: {question_encoder_precision()}; {len(questions)} hand-written questions over "
                f"{len(texts)} demo chunks; grounding (embed + search): "
                f"{spent}; cosine served to fp32 min {min(cosines):.6f} mean {np.mean(cosines):.6f}; same top passage "
                f"{same_top:.3f}; answer in the top {K}: served {answered['served']:.3f}, fp32 {answered['fp32']:.3f}")

    return Comparison("retrieval: served question encoder vs fp32 (grounding a request)",
                      lambda: grounding("served"), lambda: grounding("fp32"), unit="questions",
                      repeats=1 if quick else 3, notes=notes)


def search(quick: bool) -> Comparison:
    from pynndescent import NNDescent

    from datacreek_assets.embeddings.question_encoder import embed_question
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
        index.search(embed_question(q), K, question=q)
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


def question_words(quick: bool) -> Comparison:
    from datacreek_assets.embeddings.question_encoder import embed_question
    from datacreek_assets.retrieval.index import RetrievalIndex

    texts, demo, rows = demo_index_and_questions(quick)
    vectors = [embed_question(r["question"]) for r in rows]  # as served
    answered = {}
    for name, words in (("vectors + words", True), ("vectors alone", False)):
        found = [demo.search(v, K, question=r["question"] if words else None) for r, v in zip(rows, vectors)]
        answered[name] = [np.mean([any(r["answer"].lower() in p.text.lower() for p in ps[:k])
                                   for r, ps in zip(rows, found)]) for k in (1, K)]

    rng = np.random.default_rng(0)
    n = 2_000 if quick else 20_000
    big_vectors = rng.normal(size=(n, 384)).astype(np.float32)
    big_vectors /= np.linalg.norm(big_vectors, axis=1, keepdims=True)
    big = RetrievalIndex("bench", [f"c{i}" for i in range(n)], ["d"] * n, [texts[i % len(texts)] for i in range(n)],
                         big_vectors)
    started = time.perf_counter()
    big.lexical()  # built once per index version (serving: when the version is loaded)
    build_s = time.perf_counter() - started
    added: list[float] = []

    def served() -> int:
        for r, v in zip(rows, vectors):
            started = time.perf_counter()
            big.search(v, K, question=r["question"])
            added.append(time.perf_counter() - started)
        return len(rows)

    def alone() -> int:
        for v in vectors:
            big.search(v, K)
        return len(rows)

    def notes() -> str:
        shares = "; ".join(f"{name}: top 1 {a[0]:.3f}, top {K} {a[1]:.3f}" for name, a in answered.items())
        return (f"{len(rows)} hand-written questions over {len(texts)} demo chunks (served encoder), answer in the "
                f"{shares}; over {n} chunks the search with BM25 took p50 {np.percentile(added, 50) * 1000:.2f} "
                f"ms, p99 {np.percentile(added, 99) * 1000:.2f} ms; BM25 terms built in {build_s:.2f} s")

    return Comparison(f"retrieval: vectors + the question's words (BM25), as served, vs vectors alone, {n} chunks",
                      served, alone, unit="queries", repeats=1 if quick else 3, notes=notes)


NEIGHBOURS = 5  # a question entity's strongest co-occurring entities that count, at half weight


def sources(quick: bool) -> Comparison:
    import json
    import math
    from collections import Counter, defaultdict
    from importlib import resources
    from itertools import combinations

    from bench.embeddings import corpus_texts
    from datacreek_assets.embeddings.embedder import embed_texts
    from datacreek_assets.embeddings.question_encoder import embed_question
    from datacreek_assets.graph.extraction import _tokens, entity_id_for, extract

    texts = corpus_texts(60 if quick else 240)
    vectors = np.asarray(embed_texts(texts, precision="auto"), dtype=np.float32)  # as chunk_embeddings
    naming: dict[str, set[int]] = defaultdict(set)  # entity id -> the chunks that name it (MENTIONS)
    pairs: Counter = Counter()  # co-occurrence weights (CO_OCCURS)
    for i, text in enumerate(texts):
        found = sorted({e.entity_id for e in extract(text)[0]})
        for entity in found:
            naming[entity].add(i)
        pairs.update(combinations(found, 2))
    neighbours: dict[str, list[str]] = defaultdict(list)
    for (a, b), _ in sorted(pairs.items(), key=lambda kv: -kv[1]):
        for x, y in ((a, b), (b, a)):
            if len(neighbours[x]) < NEIGHBOURS:
                neighbours[x].append(y)
    rows = [json.loads(line) for line in
            resources.files("datacreek_assets").joinpath("demo_questions.jsonl").read_text().splitlines() if line]
    rows = rows[: 30 if quick else None]
    question_vectors = [embed_question(r["question"]) for r in rows]  # as served

    def entities_in(question: str) -> list[str]:
        tokens = _tokens(question)
        spans = (" ".join(tokens[s:s + n]) for n in range(1, 5) for s in range(len(tokens) - n + 1))
        return sorted({e for e in map(entity_id_for, spans) if e in naming})

    def graph_scores(question: str, hops: bool) -> Counter:
        scores: Counter = Counter()
        for entity in entities_in(question):
            for near, weight in [(entity, 1.0)] + [(n, 0.5) for n in neighbours[entity] if hops]:
                for chunk in naming[near]:
                    scores[chunk] += weight * math.log(len(texts) / len(naming[near]))
        return scores

    def graph_ranked(question: str, hops: bool = True) -> list[int]:  # best first; ties: the earlier chunk
        scores = graph_scores(question, hops)
        return sorted(scores, key=lambda c: (-scores[c], c))

    def by_vector(vector) -> list[int]:
        return [int(i) for i in np.argsort(-(vectors @ vector), kind="stable")]

    def fused(vector, question: str) -> list[int]:  # reciprocal rank fusion (k = 60)
        score: Counter = Counter({c: 1 / (60 + r) for r, c in enumerate(by_vector(vector)[:20])})
        for r, c in enumerate(graph_ranked(question)[:20]):
            score[c] += 1 / (60 + r)
        return sorted(score, key=lambda c: (-score[c], c))[:K]

    def boosted(vector, question: str, by: float) -> list[int]:
        graph, near = graph_scores(question, hops=True), vectors @ vector
        top = max(graph.values(), default=1.0) or 1.0
        return sorted(range(len(texts)), key=lambda c: -(near[c] + by * graph.get(c, 0.0) / top))[:K]

    def with_graph_last(vector, question: str) -> list[int]:  # the best graph chunk not in the vectors' first 2
        ranked = by_vector(vector)
        extra = [c for c in graph_ranked(question) if c not in ranked[:K - 1]][:1]
        return ranked[:K - 1] + extra if extra else ranked[:K]

    rankings = {
        "vectors": lambda v, q: by_vector(v)[:K],
        "graph (entities)": lambda v, q: graph_ranked(q, hops=False)[:K],
        "graph (entities + neighbours)": lambda v, q: graph_ranked(q)[:K],
        "reciprocal rank fusion": fused,
        "vectors, boosted 0.02 by graph": lambda v, q: boosted(v, q, 0.02),
        "vectors, boosted 0.1 by graph": lambda v, q: boosted(v, q, 0.1),
        "2 vectors + best graph": with_graph_last,
        f"vectors top {K + 1} (for scale)": lambda v, q: by_vector(v)[:K + 1],
    }
    answered = {name: np.mean([any(r["answer"].lower() in texts[c].lower() for c in rank(v, r["question"]))
                               for r, v in zip(rows, question_vectors)]) for name, rank in rankings.items()}
    named = np.mean([bool(entities_in(r["question"])) for r in rows])

    def run(name: str) -> int:
        for r, v in zip(rows, question_vectors):
            rankings[name](v, r["question"])
        return len(rows)

    notes = (f"{len(rows)} hand-written questions over {len(texts)} demo chunks, {len(naming)} entities; "
             f"questions naming an entity of the graph {named:.3f}; answer in the top {K}: "
             + ", ".join(f"{name} {share:.3f}" for name, share in answered.items()))
    return Comparison(f"retrieval sources: vectors + graph neighbourhood (fused) vs vectors alone, top {K}",
                      lambda: run("reciprocal rank fusion"), lambda: run("vectors"), unit="questions",
                      repeats=1 if quick else 3, notes=notes)
