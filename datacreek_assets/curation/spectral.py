"""Δλ: how much an edge matters to a tenant graph's structure, for the curator's review queue.

The score of an edge is the change of the smallest non-trivial eigenvalues of the graph's
normalized Laplacian if the edge were removed (an existing edge) or added (a proposed one).
The eigenvalues are the whole graph's ``k`` smallest non-trivial ones. A co-occurrence graph has
many components, each with its own zero; non-trivial means not a component's 0: a removal that
cuts off a node leaves it a component of its own and changes the rest a little, while one that
cuts a bridge between two large parts takes away the small eigenvalue that bottleneck made. Each
component's spectrum is computed on its own (the graph's is their union), and an edge changes only
its own component's: the graph's smallest move when that component holds some of them, or when the
change brings one of its eigenvalues below them. An edge of a small, tight component (whose
eigenvalues are all large) scores near 0, however much it reshapes that component: scored per
component, such edges (often extraction debris: a heading's words, a table's cells) came first on
the demo corpus.

Every candidate is scored cheaply by first-order perturbation from eigenvectors computed once.
With ``L y = λ D y`` (``L = D - A``, ``yᵀ D y = 1``), changing the weight of (u, v) by δ changes
``L`` by ``δ (e_u - e_v)(e_u - e_v)ᵀ`` and ``D`` by ``δ (e_u e_uᵀ + e_v e_vᵀ)``, so

    Δλ ≈ δ [(y_u - y_v)² - λ (y_u² + y_v²)].

That estimate is badly wrong when the perturbation is comparable to the eigengap (eigenvectors
mix), when the eigenvector is localised on the edge (the perturbation is not small where the
vector lives), or when a removal isolates a node. Such scores are flagged untrusted, and the
top candidates (by estimate, and the untrusted among the next ones) are re-solved exactly,
warm-started from the eigenvectors already known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh

ZERO = 1e-9  # an eigenvalue this small is a component's trivial one
DENSE_MAX = 400  # a component this small is solved densely (exact every time)
LOCALISED_MASS = 0.25  # an eigenvector with this share of its mass on the edge's two nodes
GAP_SHARE = 0.5  # an estimate over this share of the eigengap beside it
WEIGHT_SHARE = 0.5  # an edge over this share of an endpoint's weighted degree


@dataclass(frozen=True)
class Candidate:
    """An edge to score: an existing one (its removal) or a proposed one (its addition)."""

    u: str
    v: str
    weight: float | None = None  # what it removes (None: the whole edge) or adds (None: 1)
    exists: bool = True


@dataclass(frozen=True)
class EdgeScore:
    u: str
    v: str
    exists: bool
    delta: tuple[float, ...]  # the change of each tracked eigenvalue (smallest non-trivial first)
    score: float  # the largest |change|
    exact: bool  # re-solved (or a dense component), not an estimate
    trusted: bool  # an estimate that first order can be believed for (exact ones are)
    reason: str = ""  # why an estimate is not trusted


@dataclass
class _Spectrum:
    """The tracked eigenpairs of one component: ``values[0]`` is its trivial 0."""

    nodes: np.ndarray  # graph indices of the component's nodes
    adjacency: sp.csr_matrix
    values: np.ndarray
    vectors: np.ndarray  # D^{-1/2} scaled (y), one column per value
    unit: np.ndarray  # the normalized Laplacian's unit eigenvectors (x)
    exact_only: bool  # dense: every candidate is solved exactly
    local: np.ndarray  # graph index -> index in the component (-1: another component's node)
    degrees: np.ndarray  # weighted, of the component's nodes


class SpectralScorer:
    """Δλ for candidates of one graph (``edges``: (u, v, weight), undirected; repeated pairs add
    up, self-loops are ignored). ``k`` eigenvalues are tracked per component."""

    def __init__(self, edges: list[tuple[str, str, float]], k: int = 4):
        if k < 1:
            raise ValueError("k (eigenvalues tracked) must be at least 1")
        self.k = k
        names = sorted({n for u, v, _ in edges for n in (u, v)})
        self.index = {n: i for i, n in enumerate(names)}
        rows, cols, weights = [], [], []
        for u, v, w in edges:
            if u == v:
                continue
            if not np.isfinite(w) or w <= 0:
                raise ValueError(f"edge ({u}, {v}) has weight {w!r}: weights are positive")
            rows += [self.index[u], self.index[v]]
            cols += [self.index[v], self.index[u]]
            weights += [w, w]
        n = len(names)
        self.adjacency = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))
        self.adjacency.sum_duplicates()
        _, self.component = connected_components(self.adjacency, directed=False)
        self._spectra: dict[int, _Spectrum] = {}
        self._lowest: tuple[np.ndarray, list[tuple[float, int]]] | None = None

    # -- scores ---------------------------------------------------------------
    def scores(self, candidates: list[Candidate], top_k: int = 20) -> list[EdgeScore]:
        """Every candidate's Δλ, strongest first. The ``top_k`` shown first are exact (re-solved
        until no estimate outranks them), and so are the ``top_k`` strongest untrusted estimates
        below them (an untrusted estimate may belong higher); the rest are estimates."""
        scored = [self.estimate(c) for c in candidates]

        def ranked() -> list[int]:
            return sorted(range(len(scored)), key=lambda i: (-scored[i].score, scored[i].u, scored[i].v))

        for i in [i for i in ranked()[top_k:] if not scored[i].trusted][:top_k]:
            scored[i] = self.exact(candidates[i])
        while pending := [i for i in ranked()[:top_k] if not scored[i].exact]:
            for i in pending:
                scored[i] = self.exact(candidates[i])
        return [scored[i] for i in ranked()]

    def estimate(self, candidate: Candidate) -> EdgeScore:
        """First-order Δλ (exact for a dense component)."""
        spectrum, (a, b), delta_w = self._locate(candidate)
        if spectrum.exact_only:
            return self.exact(candidate)
        values, y, x = spectrum.values[1:self.k + 1], spectrum.vectors[:, 1:self.k + 1], spectrum.unit[:, 1:self.k + 1]
        delta = delta_w * ((y[a] - y[b]) ** 2 - values * (y[a] ** 2 + y[b] ** 2))
        reason = self._distrust(spectrum, a, b, delta_w, delta, x)
        return _score(candidate, self._graph_delta(spectrum, values + delta), exact=False, reason=reason)

    def exact(self, candidate: Candidate) -> EdgeScore:
        """Δλ from the changed graph's own eigenvalues (the component re-solved, warm-started)."""
        spectrum, (a, b), delta_w = self._locate(candidate)
        n = spectrum.adjacency.shape[0]
        changed = (spectrum.adjacency + sp.csr_matrix(([delta_w, delta_w], ([a, b], [b, a])), shape=(n, n))).tocsr()
        changed.data[np.abs(changed.data) < ZERO] = 0.0  # a removed edge: gone, not a tiny weight
        changed.eliminate_zeros()
        # a removal may split the component (a bridge) or isolate a node: each part has its own
        # trivial 0 (which an eigensolver run on the whole would not be sure to find twice), and
        # the non-trivial eigenvalues compared are the parts' together
        parts, label = connected_components(changed, directed=False)
        values = []
        for part in range(parts):
            nodes = np.flatnonzero(label == part)
            if len(nodes) > 1:
                warm = spectrum.unit[nodes][:, :self.k + 1].sum(axis=1)
                values.append(_smallest(changed[nodes][:, nodes], self.k + 1, warm, spectrum.exact_only)[1:])
        new = np.sort(np.concatenate(values))[:self.k] if values else np.zeros(0)
        return _score(candidate, self._graph_delta(spectrum, new), exact=True, reason="")

    def eigenvalues(self, node: str) -> tuple[float, ...]:
        """The smallest eigenvalues of the node's component, its trivial 0 first."""
        if node not in self.index:
            raise KeyError(f"{node!r} is not a node of this graph")
        return tuple(float(v) for v in self._spectrum(int(self.component[self.index[node]])).values[:self.k + 1])

    def smallest(self) -> tuple[float, ...]:
        """The graph's ``k`` smallest non-trivial eigenvalues (every component's spectrum)."""
        return tuple(float(v) for v in self._graph_floor()[0])

    # -- internals --------------------------------------------------------------
    def _graph_floor(self) -> tuple[np.ndarray, list[tuple[float, int]]]:
        """The graph's k smallest non-trivial eigenvalues, and the 2k smallest with their
        components (any one component's k aside, k of them are left)."""
        if self._lowest is None:
            labelled = sorted((float(v), int(c)) for c in np.unique(self.component)
                              for v in self._spectrum(int(c)).values[1:self.k + 1])
            self._lowest = (np.array([v for v, _ in labelled[:self.k]]), labelled[:2 * self.k])
        return self._lowest

    def _graph_delta(self, spectrum: _Spectrum, new_values: np.ndarray) -> np.ndarray:
        """Δ of the graph's k smallest non-trivial eigenvalues when the component's become ``new_values``."""
        old, head = self._graph_floor()
        component = int(self.component[spectrum.nodes[0]])
        others = [v for v, c in head if c != component][:self.k]
        new = np.sort(np.concatenate([np.asarray(others, dtype=float), np.asarray(new_values, dtype=float)]))[:self.k]
        m = min(len(new), len(old))
        return new[:m] - old[:m]

    def _locate(self, candidate: Candidate) -> tuple[_Spectrum, tuple[int, int], float]:
        for node in (candidate.u, candidate.v):
            if node not in self.index:
                raise KeyError(f"{node!r} is not a node of this graph")
        if candidate.u == candidate.v:
            raise ValueError(f"a self-loop ({candidate.u}) has no place in the Laplacian's spectrum")
        i, j = self.index[candidate.u], self.index[candidate.v]
        if self.component[i] != self.component[j]:
            raise ValueError(f"{candidate.u!r} and {candidate.v!r} lie in different components: the edge would "
                             "join them (its score is that of a new connection, not a change)")
        current = float(self.adjacency[i, j])
        if candidate.exists and current <= 0:
            raise ValueError(f"({candidate.u}, {candidate.v}) is not an edge of this graph")
        if candidate.weight is not None and not (np.isfinite(candidate.weight) and candidate.weight > 0):
            raise ValueError(f"a candidate's weight is positive, not {candidate.weight!r}")
        if candidate.exists:  # e.g. one fact of the pair's weight, or the whole edge
            delta_w = -min(candidate.weight or current, current)
        else:
            delta_w = candidate.weight or 1.0
        spectrum = self._spectrum(int(self.component[i]))
        return spectrum, (int(spectrum.local[i]), int(spectrum.local[j])), delta_w

    def _spectrum(self, component: int) -> _Spectrum:
        if component not in self._spectra:
            nodes = np.flatnonzero(self.component == component)
            adjacency = self.adjacency[nodes][:, nodes].tocsr()
            dense = len(nodes) <= DENSE_MAX
            values, unit = _eigenpairs(adjacency, self.k + 2, dense)  # one above the last tracked: its gap
            degrees = np.asarray(adjacency.sum(axis=1)).ravel()
            local = np.full(len(self.component), -1)
            local[nodes] = np.arange(len(nodes))
            self._spectra[component] = _Spectrum(nodes, adjacency, values, unit / np.sqrt(degrees)[:, None], unit,
                                                 dense, local, degrees)
        return self._spectra[component]

    def _distrust(self, spectrum: _Spectrum, a: int, b: int, delta_w: float, delta: np.ndarray,
                  x: np.ndarray) -> str:
        degrees = spectrum.degrees[[a, b]]
        if delta_w < 0 and (degrees + delta_w <= ZERO).any():
            return "removing it isolates a node"
        if (abs(delta_w) > WEIGHT_SHARE * degrees).any():
            return f"it is over {WEIGHT_SHARE:.0%} of a node's weight"
        values = spectrum.values
        for t in range(len(delta)):
            i = t + 1  # its place in values
            gaps = [abs(values[i] - values[i - 1]) if i > 1 else np.inf,
                    abs(values[i + 1] - values[i]) if i + 1 < len(values) else np.inf]
            if abs(delta[t]) > GAP_SHARE * min(gaps):
                return f"eigenvalue {i + 1}: the change is over {GAP_SHARE:.0%} of its eigengap"
            if x[a, t] ** 2 + x[b, t] ** 2 > LOCALISED_MASS:
                return f"eigenvector {i + 1} is localised on the edge"
        return ""


def _score(candidate: Candidate, delta: np.ndarray, exact: bool, reason: str) -> EdgeScore:
    delta = tuple(float(d) for d in delta)
    return EdgeScore(candidate.u, candidate.v, candidate.exists, delta, max((abs(d) for d in delta), default=0.0),
                     exact, exact or not reason, reason)


def _normalized(adjacency: sp.csr_matrix) -> sp.csr_matrix:
    """D^{-1/2} A D^{-1/2}: its largest eigenvalues μ are the Laplacian's smallest, λ = 1 - μ."""
    scale = sp.diags(1.0 / np.sqrt(np.asarray(adjacency.sum(axis=1)).ravel()))
    return (scale @ adjacency @ scale).tocsr()


def _eigenpairs(adjacency: sp.csr_matrix, count: int, dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest eigenvalues of the normalized Laplacian and unit eigenvectors."""
    n = adjacency.shape[0]
    count = min(count, n)
    if dense or count >= n - 1:
        mu, x = np.linalg.eigh(_normalized(adjacency).toarray())
        mu, x = mu[::-1][:count], x[:, ::-1][:, :count]
    else:
        v0 = np.sqrt(np.asarray(adjacency.sum(axis=1)).ravel())  # the trivial vector: deterministic start
        mu, x = eigsh(_normalized(adjacency), k=count, which="LA", v0=v0 + 1e-3 * np.arange(n) / n, tol=1e-10)
        order = np.argsort(-mu)
        mu, x = mu[order], x[:, order]
    return np.clip(1.0 - mu, 0.0, 2.0), x


def _smallest(adjacency: sp.csr_matrix, count: int, warm: np.ndarray, dense: bool) -> np.ndarray:
    """The ``count`` smallest Laplacian eigenvalues of a connected graph (``warm``: a start vector
    from the unchanged component's eigenvectors)."""
    n = adjacency.shape[0]
    count = min(count, n)
    if count <= 0:
        return np.zeros(0)
    if dense or n <= DENSE_MAX or count >= n - 1:
        return np.sort(np.clip(1.0 - eigh(_normalized(adjacency).toarray(), eigvals_only=True), 0.0, 2.0))[:count]
    mu = eigsh(_normalized(adjacency), k=count, which="LA", v0=warm, tol=1e-10, return_eigenvectors=False)
    return np.sort(np.clip(1.0 - mu, 0.0, 2.0))
