"""Lens selection: candidate 2-D lenses scored by trustworthiness.

Candidates are PCA and UMAP with a few n_neighbors/min_dist settings.
Trustworthiness T (sklearn, k nearest neighbours) measures how many of a
point's lens neighbours are real neighbours; the best lens with T above the
threshold is chosen, and none is chosen when no candidate reaches it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

THRESHOLD = 0.95
UMAP_SETTINGS = [(5, 0.0), (15, 0.1), (30, 0.3)]


@dataclass
class Lens:
    name: str
    coordinates: np.ndarray
    trustworthiness: float
    seconds: float


@dataclass
class LensChoice:
    candidates: list[Lens]
    chosen: Lens | None
    threshold: float = THRESHOLD
    notes: list[str] = field(default_factory=list)


def pca_lens(vectors: np.ndarray) -> np.ndarray:
    from datacreek_assets.topology.persistence import project

    coords, _ = project(vectors, 2)
    return coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def cache_numba_kernels(package: str) -> int:
    """Turn numba's on-disk cache on for the jit functions of ``package`` (already imported) that
    were compiled without it; returns how many. UMAP 0.5 caches one small helper of its own
    (pynndescent caches its kernels), so every new process spent about 16 s compiling the rest
    before its first fit; with the cache that becomes a load of about 0.1 s after the first
    process. Must run before they compile. Best effort: where no cache folder is writable, a
    kernel stays uncached (and compiles, as before).

    A Python function jitted twice with different options (UMAP's layout epoch, parallel and not)
    is left alone: numba's cache key holds the signature and the bytecode, not the options, so the
    two would read each other's machine code."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    by_function: dict[int, list[Dispatcher]] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher):
                same = by_function.setdefault(id(value.py_func), [])
                if all(value is not d for d in same):
                    same.append(value)
    switched = 0
    for dispatchers in by_function.values():
        if len(dispatchers) == 1 and isinstance(dispatchers[0]._cache, NullCache):
            try:
                dispatchers[0].enable_caching()
            except RuntimeError:  # numba found no writable cache folder
                continue
            switched += 1
    return switched


def load_umap():
    """The umap module, with its kernels cached on disk: under NUMBA_CACHE_DIR if set, else a folder
    of this umap version's (numba checks each kernel's own source file, not the helpers it
    inlined from others, so an upgraded umap must not find the old machine code)."""
    from importlib.metadata import version

    if "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = str(Path.home() / ".cache" / "datacreek" / "numba" /
                                            f"umap-{version('umap-learn')}-pynndescent-{version('pynndescent')}")
    import numba

    numba.config.reload_config()  # numba may have been imported before the variable was set
    import umap

    cache_numba_kernels("umap")
    return umap


def umap_lens(vectors: np.ndarray, n_neighbors: int, min_dist: float, seed: int = 42) -> np.ndarray:
    umap = load_umap()
    model = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(vectors) - 1), min_dist=min_dist,
                      metric="cosine", random_state=seed, n_jobs=1, init="spectral" if len(vectors) > 20 else "random")
    return model.fit_transform(vectors)


def score(vectors: np.ndarray, coordinates: np.ndarray, k: int) -> float:
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(vectors, coordinates, n_neighbors=min(k, (len(vectors) - 1) // 2), metric="cosine"))


def choose_lens(vectors: np.ndarray, k: int = 10, use_umap: bool = True, threshold: float = THRESHOLD) -> LensChoice:
    builders = [("pca", lambda: pca_lens(vectors))]
    if use_umap and len(vectors) > 10:
        builders += [(f"umap(n_neighbors={n}, min_dist={d})", lambda n=n, d=d: umap_lens(vectors, n, d))
                     for n, d in UMAP_SETTINGS]
    candidates = []
    for name, build in builders:
        start = time.perf_counter()
        coords = build()
        candidates.append(Lens(name, coords, score(vectors, coords, k), time.perf_counter() - start))
    passing = [c for c in candidates if c.trustworthiness > threshold]
    chosen = max(passing, key=lambda c: c.trustworthiness) if passing else None
    notes = [] if chosen else [f"no lens reached T > {threshold}: best was "
                               f"{max(candidates, key=lambda c: c.trustworthiness).name}"]
    return LensChoice(candidates, chosen, threshold, notes)
