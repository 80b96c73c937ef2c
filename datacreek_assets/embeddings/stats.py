"""Reference statistics of a tenant's embeddings and retrieval quality figures."""

from __future__ import annotations

import io

import numpy as np

REFERENCE_SAMPLE = 2048  # enough pairs that the linear MMD's noise stays well under the warn level


def reference_statistics(vectors: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """What drift is measured against: the centroid, the per-dimension variance, the count, a
    fixed-size random sample and the kernel bandwidth for the MMD (see embeddings/drift.py)."""
    from datacreek_assets.embeddings.drift import median_bandwidth

    rng = np.random.default_rng(seed)
    take = min(REFERENCE_SAMPLE, len(vectors))
    sample = vectors[np.sort(rng.choice(len(vectors), size=take, replace=False))] if take else vectors
    return {
        "n": np.array(len(vectors)),
        "centroid": vectors.mean(axis=0) if len(vectors) else np.zeros(vectors.shape[1]),
        "variance": vectors.var(axis=0) if len(vectors) else np.zeros(vectors.shape[1]),
        "sample": sample.astype(np.float32),
        "bandwidth": np.array(median_bandwidth(sample) if len(sample) > 1 else 1.0),
    }


def to_npz(stats: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **stats)
    return buffer.getvalue()


def from_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return {k: npz[k] for k in npz.files}


RECALL_QUERIES = 2000  # rows whose neighbours recall is measured for; beyond it, a seeded sample
# query rows compared with all rows at a time: 256 × 100k similarities are 100 MB, and argpartition
# takes a few times that
QUERY_BLOCK = 256


def top_k(vectors: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Indices of each vector's k nearest neighbours by cosine (itself excluded); with ``rows``,
    of those vectors only, among all."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    rows = np.arange(len(vectors)) if rows is None else np.asarray(rows)
    k = min(k, len(vectors) - 1)
    found = []
    for block in np.array_split(rows, max(1, -(-len(rows) // QUERY_BLOCK))):
        sims = unit[block] @ unit.T
        sims[np.arange(len(block)), block] = -np.inf
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.take_along_axis(sims, part, axis=1).argsort(axis=1)[:, ::-1]
        found.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(found) if found else np.zeros((0, k), dtype=int)


def recall_at_k(reference: np.ndarray, approximate: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k neighbours (by ``reference``) that ``approximate`` also finds, over
    every row or, past RECALL_QUERIES rows, a fixed sample of them (neighbours still among all)."""
    if len(reference) <= 1:
        return 1.0
    rows = np.arange(len(reference))
    if len(rows) > RECALL_QUERIES:
        rows = np.sort(np.random.default_rng(0).choice(len(rows), RECALL_QUERIES, replace=False))
    exact, approx = top_k(reference, k, rows), top_k(approximate, k, rows)
    hits = sum(len(set(a) & set(b)) for a, b in zip(exact, approx))
    return hits / exact.size
