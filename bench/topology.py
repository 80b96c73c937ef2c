"""Persistence sketch time: Alpha complex on the 3-D PCA projection vs plain Rips
expansion to dimension 3 on the 384-d vectors (edges up to the 10 % distance
quantile), for 1,000 and 3,000 points. The baseline runs in a child process
stopped at a time limit and is then reported as "> limit"."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

from bench.harness import Comparison, TimeLimitExceeded

LIMIT_S = 60.0


def embedding_like_cloud(n: int, d: int = 384, clusters: int = 12, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few topic directions, like sentence embeddings of a corpus."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + 1.4 * rng.normal(size=(n, d)) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def plain_rips(points: np.ndarray) -> int:
    import gudhi

    gram = points @ points.T
    distances = np.sqrt(np.clip(2 - 2 * gram, 0, None))
    threshold = float(np.quantile(distances[np.triu_indices(len(points), 1)], 0.10))
    tree = gudhi.RipsComplex(distance_matrix=distances, max_edge_length=threshold).create_simplex_tree(max_dimension=3)
    tree.persistence(homology_coeff_field=2)
    return len(points)


def _child(points, queue):
    queue.put(plain_rips(points))


def rips_with_limit(points: np.ndarray, limit: float = LIMIT_S) -> int:
    # spawn, not fork: the parent already runs torch/OpenMP threads, and a forked child can deadlock
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(points, queue))
    started = time.perf_counter()
    child.start()
    child.join(limit)
    if child.is_alive():
        child.kill()
        child.join()
        raise TimeLimitExceeded(len(points), limit)
    if child.exitcode != 0:
        raise RuntimeError(f"the Rips baseline crashed (exit code {child.exitcode})")
    units = queue.get(timeout=10)
    if time.perf_counter() - started > limit:
        raise TimeLimitExceeded(len(points), limit)
    return units


def comparisons(quick: bool = False) -> list[Comparison]:
    from datacreek_assets.topology.persistence import persistence_diagram

    out = []
    for n in ((300, 1000) if quick else (1000, 3000)):
        points = embedding_like_cloud(n)
        out.append(Comparison(
            name=f"persistence H0-H2: alpha(PCA-3) vs Rips dim 3 ({n} x 384)",
            candidate=lambda p=points: (persistence_diagram(p), len(p))[1],
            baseline=lambda p=points: rips_with_limit(p, 20.0 if quick else LIMIT_S),
            unit="points", repeats=1,
            notes=f"baseline stopped at {20 if quick else int(LIMIT_S)} s; Rips edges up to the 10 % distance quantile",
        ))
    return out
