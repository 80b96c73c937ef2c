"""Drift computation for 10,000 new vectors (384-d) against a tenant's reference.

Candidate: `drift_score` (centroid distance + linear-time MMD², O(n·d)).
Baseline: the same centroid term with the unbiased quadratic-time MMD² estimator on the same
samples (2048 reference vs 2048 new, O(n²·d)): the usual choice, and what the linear estimator
replaces. Both see identical inputs; the unit is "drift evaluations".
"""

from __future__ import annotations

import numpy as np

from bench.harness import Comparison


def quadratic_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    gamma = 1.0 / (2 * bandwidth * bandwidth)

    def gram(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * np.maximum(sq, 0))

    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def comparisons(quick: bool = False) -> list[Comparison]:
    from datacreek_assets.embeddings.drift import drift_score
    from datacreek_assets.embeddings.stats import reference_statistics

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 384))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def corpus(n):
        v = centers[rng.integers(0, 20, n)] + rng.normal(0, 0.045, (n, 384))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    reference = reference_statistics(corpus(10_000))
    new = corpus(2_000 if quick else 10_000)
    rounds = 2 if quick else 5
    seen = {}

    def candidate() -> int:
        for _ in range(rounds):
            seen["linear"] = drift_score(reference, new).drift
        return rounds

    def baseline() -> int:
        sample = reference["sample"].astype(np.float64)
        picked = new[np.random.default_rng(0).choice(len(new), size=min(len(sample), len(new)), replace=False)]
        for _ in range(rounds):
            mu = new.mean(axis=0, dtype=np.float64)
            c = reference["centroid"].astype(np.float64)
            cos = float(c @ mu / (np.linalg.norm(c) * np.linalg.norm(mu)))
            seen["quadratic"] = (1 - cos) + max(0.0, quadratic_mmd2(sample, picked.astype(np.float64),
                                                                    float(reference["bandwidth"])))
        return rounds

    return [Comparison(f"drift of {len(new)} vectors (384-d) vs reference", candidate, baseline, unit="evals",
                       repeats=3, notes=lambda: f"drift linear {seen['linear']:.4f}, quadratic {seen['quadratic']:.4f}")]
