"""Topology maths on point clouds with known shape. UMAP fits only in the test of its kernel cache
(numba compiles it)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from datacreek_assets.topology.evaluation import compare
from datacreek_assets.topology.lens import choose_lens
from datacreek_assets.topology.mapper import bootstrap_cluster_counts, build_mapper, coefficient_of_variation
from datacreek_assets.topology.persistence import persistence_diagram
from datacreek_assets.topology.signature import jaccard, minhash_signature

rng = np.random.default_rng(7)


def sphere(n=400, noise=0.0):
    x = rng.normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True) + noise * rng.normal(size=(n, 3))


def circle(n=200):
    t = rng.uniform(0, 2 * np.pi, n)
    return np.c_[np.cos(t), np.sin(t), 0.01 * rng.normal(size=n)]


def long_lived(diagram, dim, threshold=0.3):
    return [(b, e) for d, b, e in diagram.points if d == dim and e - b > threshold]


def test_sphere_has_one_h2_class_and_no_lasting_h1():
    diagram = persistence_diagram(sphere())
    assert len(long_lived(diagram, 2)) == 1
    assert long_lived(diagram, 1) == []
    assert sum(1 for d, _, e in diagram.points if d == 0 and e == float("inf")) == 1


def test_circle_has_one_h1_class_and_no_h2():
    diagram = persistence_diagram(circle())
    assert len(long_lived(diagram, 1)) == 1
    assert long_lived(diagram, 2, 0.05) == []


def test_sphere_embedded_in_384_dimensions_keeps_its_void():
    basis, _ = np.linalg.qr(rng.normal(size=(384, 3)))
    diagram = persistence_diagram(sphere(300) @ basis.T)  # projection recovers the 3-D subspace
    assert len(long_lived(diagram, 2)) == 1 and diagram.projection_variance > 0.999


def test_tiny_clouds():
    assert persistence_diagram(np.zeros((1, 384))).points == [(0, 0.0, float("inf"))]
    assert persistence_diagram(np.zeros((0, 384))).points == []
    assert len(persistence_diagram(rng.normal(size=(2, 384))).points) == 2


def test_signature_is_512_bits_deterministic_and_similarity_sensitive():
    a, b = persistence_diagram(sphere()), persistence_diagram(circle())
    sig = minhash_signature(a)
    assert len(sig) == 64 and sig == minhash_signature(a)
    assert jaccard(sig, sig) == 1.0
    assert jaccard(sig, minhash_signature(b)) < 0.5


def test_lens_selection_prefers_a_trustworthy_lens_and_says_when_none_is():
    plane = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 50))  # intrinsically 2-D
    choice = choose_lens(plane + 1e-3 * rng.normal(size=(300, 50)), use_umap=False)
    assert choice.chosen is not None and choice.chosen.name == "pca" and choice.chosen.trustworthiness > 0.95
    noise = rng.normal(size=(300, 50))  # no 2-D view can be trusted
    none = choose_lens(noise, use_umap=False)
    assert none.chosen is None and "no lens reached" in none.notes[0]


def test_mapper_separates_blobs_and_is_stable():
    blobs = np.vstack([rng.normal(size=(80, 10)) * 0.05, rng.normal(size=(80, 10)) * 0.05 + 5])
    lens = blobs[:, :2]
    graph = build_mapper(blobs, lens, resolution=4)
    members = [set(n.tolist()) for n in graph.nodes]
    assert not any(m & set(range(80)) and m & set(range(80, 160)) for m in members)
    # both blobs are covered by clusters (an empty graph separates nothing)
    covered = set().union(*members)
    assert covered & set(range(80)) and covered & set(range(80, 160))
    counts = bootstrap_cluster_counts(blobs, lens, resamples=10, resolution=4)
    assert min(counts) >= 2 and coefficient_of_variation(counts) <= 0.05


def test_recall_comparison_reports_both_sides_and_the_control():
    vectors = np.vstack([rng.normal(size=(12, 8)) + 3 * np.eye(8)[k] for k in range(2)])
    docs = ["json.md"] * 6 + ["csv.md"] * 6 + ["random.md"] * 6 + ["decimal.md"] * 6
    sigs = {d: minhash_signature(persistence_diagram(vectors[[i for i, x in enumerate(docs) if x == d]]))
            for d in set(docs)}
    result = compare(vectors, docs, sigs, weight=0.1)
    assert result["queries"] == 24
    assert 0 <= result["embedding_only"] <= 1 and 0 <= result["with_signature"] <= 1
    assert result["difference"] == pytest.approx(result["with_signature"] - result["embedding_only"])
    assert result["same_document_boost_control"] is not None


UMAP_FIT = """
import json, numpy as np
from datacreek_assets.topology.lens import umap_lens
import umap.umap_, umap.utils, umap.layouts
coords = umap_lens(np.random.default_rng(3).normal(size=(40, 24)).astype(np.float32), 5, 0.0)
kernels = {k.py_func.__name__: (sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())) for k in (
    umap.utils.fast_knn_indices, umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths)}
# one function jitted twice (parallel and not): one cache key for both, so neither may use the cache
twice = [type(k._cache).__name__ for k in (umap.layouts._nb_optimize_layout_euclidean_single_epoch,
                                           umap.layouts._nb_optimize_layout_euclidean_single_epoch_parallel)]
print(json.dumps({"kernels": kernels, "twice": twice, "coordinates": coords.tolist()}))
"""


def test_a_second_process_loads_umaps_kernels_from_the_disk_cache_and_fits_the_same_lens(tmp_path):
    """UMAP caches almost none of its numba kernels; without load_umap's cache every process
    compiled them (about 16 s) before its first lens. A cache folder of its own: the first process
    compiles (pynndescent's kernels too, about 45 s in all), the second loads."""
    def fit() -> dict:
        out = subprocess.run([sys.executable, "-c", UMAP_FIT], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_NUM_THREADS": "1",
                                  "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.splitlines()[-1])

    first, second = fit(), fit()
    for name, (hits, misses) in first["kernels"].items():
        assert hits == 0 and misses >= 1, f"{name}: {hits} hits, {misses} misses in an empty cache"
    for name, (hits, misses) in second["kernels"].items():
        assert hits >= 1 and misses == 0, f"{name} was compiled again: {hits} hits, {misses} misses"
    assert second["twice"] == ["NullCache", "NullCache"]
    assert np.array_equal(np.array(first["coordinates"]), np.array(second["coordinates"]))
