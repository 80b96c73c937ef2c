"""Embeddings and feature lookups, each next to its baseline.

- throughput: the project's embedder (its precision chosen for this CPU) vs
  SentenceTransformer.encode with its defaults, same texts; its quality against the fp32 vectors
  (minimum cosine, and fp8 recall@10 of its stored vectors against the fp32 neighbours, with the
  stored rounding and with rounding to nearest);
- the precision's own share: the embedder in bf16 vs in fp32, where bf16 is faster (AMX);
- re-materialization with 90 % of chunks unchanged (hash, embed only the new) vs a full recompute;
- online lookups (Feast SQLite online store, read through its online_read) of 1 and 100 keys, at
  100k stored vectors, vs reading the offline parquet file.
Both sides run on one torch thread.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import Comparison


def corpus_texts(limit: int) -> list[str]:
    from datacreek_assets.demo_corpus import write_demo_corpus
    from datacreek_assets.ingest.chunking import chunk_text
    from datacreek_assets.ingest.parsing import ParsedDocument, parse_document
    from datacreek_assets.object_store import LocalObjectStore, TenantObjectStore

    store = TenantObjectStore(LocalObjectStore(tempfile.mkdtemp(prefix="bench-corpus-")), "bench")
    texts = []
    for key in write_demo_corpus(store, max_docs=60):
        doc = parse_document(key, store.get(key))
        if isinstance(doc, ParsedDocument):
            texts.extend(c.text for c in chunk_text(key, doc.text))
    return texts[:limit]


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"p50 {statistics.median(ms):.2f} ms, p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.2f} ms"


def comparisons(quick: bool = False) -> list[Comparison]:
    import torch
    from sentence_transformers import SentenceTransformer

    from datacreek_assets.embeddings.embedder import embed_texts, embedding_hash, model_dir, resolve_precision
    from datacreek_assets.embeddings.fp8 import dequantize, quantize, rounding_weights
    from datacreek_assets.embeddings.stats import recall_at_k

    torch.set_num_threads(1)
    texts = corpus_texts(60 if quick else 240)
    reference = SentenceTransformer(str(model_dir()), device="cpu")
    precision = resolve_precision("auto")  # what the chunk_embeddings asset computes in here
    embed_texts(texts[:2], precision=precision)  # load once, outside the timing

    def quality() -> str:
        exact, ours = embed_texts(texts, precision="fp32"), embed_texts(texts, precision=precision)

        def stored(vectors, nearest=False):  # what the feature store keeps: fp8 with a scale per vector
            return dequantize(*quantize(vectors, None if nearest else rounding_weights(vectors)))

        def recall(vectors) -> str:
            return (f"{recall_at_k(exact, stored(vectors), k=10):.4f} "
                    f"(rounded to nearest: {recall_at_k(exact, stored(vectors, nearest=True), k=10):.4f})")

        return (f"{precision}: min cosine to fp32 {float((exact * ours).sum(1).min()):.5f}; fp8 recall@10 against "
                f"the fp32 neighbours: of these vectors {recall(ours)}, of the fp32 vectors {recall(exact)}")

    throughput = Comparison(
        name=f"embed: token-budget batches, {precision}, vs ST.encode ({len(texts)} chunks)",
        candidate=lambda: len(embed_texts(texts, precision=precision)),
        baseline=lambda: len(reference.encode(texts, show_progress_bar=False)),  # no bar, same work
        unit="chunks", repeats=1 if quick else 3, warmup=0 if quick else 1,
        notes=lambda: f"all-MiniLM-L6-v2, 1 torch thread, ST.encode defaults (batch_size=32); {quality()}",
    )
    own_share = [Comparison(
        name=f"embed: bf16 autocast vs fp32, same batches ({len(texts)} chunks)",
        candidate=lambda: len(embed_texts(texts, precision="bf16")),
        baseline=lambda: len(embed_texts(texts, precision="fp32")),
        unit="chunks", repeats=1 if quick else 3, notes="oneDNN with AMX",
    )] if precision == "bf16" else []

    # 90 % unchanged: the stored vectors cover all but every tenth chunk
    stored = {embedding_hash(t): None for i, t in enumerate(texts) if i % 10}

    def incremental() -> int:
        missing = [t for t in texts if embedding_hash(t) not in stored]
        embed_texts(missing, precision=precision)
        return len(texts)

    rematerialize = Comparison(
        name=f"re-embed, 90% unchanged vs full recompute ({len(texts)})",
        candidate=incremental, baseline=lambda: len(embed_texts(texts, precision=precision)), unit="chunks",
        repeats=1 if quick else 3, notes="hashing every chunk is included in the candidate's time",
    )
    return [throughput, *own_share, rematerialize, *lookup_comparisons(quick)]


def lookup_comparisons(quick: bool) -> list[Comparison]:
    import pandas as pd
    from prometheus_client import CollectorRegistry

    from datacreek_assets.embeddings.feature_store import FeatureStoreSettings, TenantFeatures, open_feature_store
    from datacreek_assets.embeddings.fp8 import quantize
    from datacreek_assets.metrics import FeatureCacheMetrics

    folder = Path(tempfile.mkdtemp(prefix="bench-feast-"))
    settings = FeatureStoreSettings(registry=str(folder / "registry.db"), offline_dir=str(folder / "offline"),
                                    online={"type": "sqlite", "path": str(folder / "online.db")})
    store = open_feature_store(settings)
    metrics = FeatureCacheMetrics.for_registry(CollectorRegistry())
    n = 2000 if quick else 100_000  # the goal's scale: 100k stored vectors for the tenant
    vectors = np.random.default_rng(0).normal(size=(n, 384)).astype(np.float32)
    blobs, scales = quantize(vectors)
    hashes = [f"{i:064x}" for i in range(n)]
    frame = pd.DataFrame({"embedding_hash": hashes, "chunk_id": hashes, "doc_id": "d", "vector_fp8": blobs,
                          "scale": scales, "deleted": False})
    TenantFeatures(store, settings, "bench", metrics).write(frame)
    rng = np.random.default_rng(1)
    calls = 20 if quick else 100
    out = []
    for keys in (1, 100):
        online_lat: list[float] = []
        offline_lat: list[float] = []

        def online(keys=keys, lat=online_lat) -> int:
            # a serving process has opened the store and parsed the view before its first request
            TenantFeatures(store, settings, "bench", metrics).lookup([hashes[0]])
            for _ in range(calls):
                wanted = [hashes[i] for i in rng.choice(n, keys, replace=False)]
                features = TenantFeatures(store, settings, "bench", metrics)  # empty cache: every key is a miss
                start = time.perf_counter()
                features.lookup(wanted)
                lat.append(time.perf_counter() - start)
            return calls * keys

        def offline(keys=keys, lat=offline_lat) -> int:
            from datacreek_assets.embeddings.fp8 import dequantize

            files = TenantFeatures(store, settings, "bench", metrics).offline_files()
            for _ in range(calls):
                wanted = {hashes[i] for i in rng.choice(n, keys, replace=False)}
                start = time.perf_counter()
                rows = pd.concat([pd.read_parquet(path) for path in files])
                rows = rows[rows["embedding_hash"].isin(wanted)]
                dequantize(list(rows["vector_fp8"]), rows["scale"])
                lat.append(time.perf_counter() - start)
            return calls * keys

        out.append(Comparison(
            name=f"lookup {keys} key(s): online store vs offline parquet",
            candidate=online, baseline=offline, unit="keys", repeats=1,
            notes=lambda a=online_lat, b=offline_lat: f"online {percentiles(a)}; offline {percentiles(b)} ({n} vectors stored)",
        ))
    return out
