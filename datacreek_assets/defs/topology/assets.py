"""Topological sketches: persistence diagrams + MinHash signatures, a 2-D lens, a Mapper graph."""

import io
import time
from collections import defaultdict

import dagster as dg
import numpy as np

from datacreek_assets.automation import downstream_condition
from datacreek_assets.defs.embeddings.assets import chunk_embeddings, read_vectors
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.pictures import mapper_picture, persistence_picture, png_markdown, scatter_picture
from datacreek_assets.tenancy import validate_tenant_id
from datacreek_assets.topology.mapper import MIN_POINTS, STABILITY_LIMIT
from resources.stores import FeatureStoreResource, ObjectStoreResource

LENS_KEY = "topology/lens.npz"


class SketchConfig(dg.Config):
    signature_weight: float = 0.1  # weight of signature Jaccard in the augmented retrieval score


class LensConfig(dg.Config):
    use_umap: bool = True
    neighbours: int = 10  # k of trustworthiness


class MapperConfig(dg.Config):
    resolution: int = 6
    overlap: float = 0.3
    bootstrap_resamples: int = 20


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="topology",
    kinds={"gudhi"},
    deps=[chunk_embeddings],
    description="Persistence diagrams (H0-H2, Alpha complex on the 3-D PCA projection) per document and for "
    "the tenant; each document's 512-bit MinHash signature stored next to its chunks' embeddings in Feast.",
)
def persistence_sketches(context: dg.AssetExecutionContext, config: SketchConfig, object_store: ObjectStoreResource, feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    from datacreek_assets.topology.evaluation import compare
    from datacreek_assets.topology.persistence import persistence_diagram
    from datacreek_assets.topology.signature import minhash_signature

    tenant = validate_tenant_id(context.partition_key)
    store = object_store.for_tenant(tenant)
    frame, vectors = read_vectors(store)
    timings = {}
    t = time.perf_counter()
    whole = persistence_diagram(vectors)
    timings["tenant_diagram_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    rows_by_doc = defaultdict(list)
    for i, doc_id in enumerate(frame["doc_id"]):
        rows_by_doc[doc_id].append(i)
    diagrams = {doc: persistence_diagram(vectors[idx]) for doc, idx in rows_by_doc.items()}
    timings["document_diagrams_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    signatures = {doc: minhash_signature(d) for doc, d in diagrams.items()}
    timings["signatures_s"] = round(time.perf_counter() - t, 3)
    store.put_json("topology/diagrams.json", {
        "tenant": whole.points and [[d, b, None if e == float("inf") else e] for d, b, e in whole.points],
        "documents": {doc: [[x, b, None if e == float("inf") else e] for x, b, e in d.points] for doc, d in diagrams.items()},
    })
    # the signature, as its own feature next to each chunk's embedding
    features = feature_store.for_tenant(tenant, view="chunk_topology")
    current = frame[["embedding_hash", "chunk_id", "doc_id"]].assign(
        doc_signature=[signatures[d] for d in frame["doc_id"]], deleted=False)
    live = features.live_values("doc_signature")
    changed = current[[live.get(h) != s for h, s in zip(current["embedding_hash"], current["doc_signature"])]]
    written, _ = features.sync(changed, keep=set(current["embedding_hash"]))
    recall = compare(vectors, list(frame["doc_id"]), signatures, weight=config.signature_weight)
    png = persistence_picture(whole.points, f"{tenant}: persistence of {len(vectors)} chunk embeddings")
    store.put("reports/persistence.png", png)
    persistent = {f"H{k}": whole.betti_persistent(k, 0.05 * max(whole.finite_max(), 1e-9)) for k in (0, 1, 2)}
    return dg.MaterializeResult(
        metadata={
            "points": len(vectors),
            "documents": len(diagrams),
            "diagram_points": {f"H{k}": sum(1 for d, _, _ in whole.points if d == k) for k in (0, 1, 2)},
            "persistent_features_over_5pct": persistent,
            "projection_variance_kept": round(whole.projection_variance, 4),
            "signature_bits": 512,
            "signature_rows_written": written,
            "retrieval_recall_at_10": recall,
            "timings": timings,
            "persistence_diagram": dg.MetadataValue.md(png_markdown(png, "persistence diagram")),
        }
    )


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="topology",
    kinds={"umap"},
    deps=[chunk_embeddings],
    description="Candidate 2-D lenses (PCA, UMAP) scored by trustworthiness; the best with T > 0.95 is chosen.",
)
def umap_lens(context: dg.AssetExecutionContext, config: LensConfig, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    from datacreek_assets.topology.lens import choose_lens

    tenant = validate_tenant_id(context.partition_key)
    store = object_store.for_tenant(tenant)
    frame, vectors = read_vectors(store)
    if len(vectors) < 4:
        raise dg.Failure(f"tenant {tenant!r} has {len(vectors)} chunk embeddings; a lens needs at least 4")
    started = time.perf_counter()
    choice = choose_lens(vectors, k=config.neighbours, use_umap=config.use_umap)
    best = choice.chosen or max(choice.candidates, key=lambda c: c.trustworthiness)
    buffer = io.BytesIO()
    np.savez(buffer, coordinates=best.coordinates, name=best.name, trustworthiness=best.trustworthiness,
             chosen=choice.chosen is not None, embedding_hash=np.array(frame["embedding_hash"], dtype=str))
    store.put(LENS_KEY, buffer.getvalue())
    png = scatter_picture(best.coordinates, list(frame["doc_id"]),
                          f"{tenant}: {best.name}, T={best.trustworthiness:.3f}")
    store.put("reports/lens.png", png)
    return dg.MaterializeResult(
        metadata={
            "chosen_lens": choice.chosen.name if choice.chosen else f"NONE reached T > {choice.threshold}",
            "chosen_trustworthiness": round(choice.chosen.trustworthiness, 4) if choice.chosen else None,
            "lens_used_downstream": best.name,
            "candidates": {c.name: {"T": round(c.trustworthiness, 4), "seconds": round(c.seconds, 2)} for c in choice.candidates},
            "notes": "; ".join(choice.notes) or "ok",
            "total_seconds": round(time.perf_counter() - started, 2),
            "lens": dg.MetadataValue.md(png_markdown(png, "lens")),
        }
    )


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="topology",
    kinds={"python"},
    deps=[umap_lens],
    check_specs=[dg.AssetCheckSpec("mapper_stability", asset="mapper_graph",
                                   description="coefficient of variation of the cluster count over bootstrap resamples <= 5 %; "
                                   "advisory (reported, not judged) for tenants of fewer than 100 chunks")],
    description="Mapper graph on the chosen lens; its stability is measured over bootstrap resamples.",
)
def mapper_graph(context: dg.AssetExecutionContext, config: MapperConfig, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    from datacreek_assets.topology.mapper import bootstrap_cluster_counts, build_mapper, judge_stability

    tenant = validate_tenant_id(context.partition_key)
    store = object_store.for_tenant(tenant)
    frame, vectors = read_vectors(store)
    with np.load(io.BytesIO(store.get(LENS_KEY))) as lens_file:
        lens = lens_file["coordinates"]
        lens_name = str(lens_file["name"])
        lens_hashes = list(lens_file["embedding_hash"])
    if lens_hashes != list(frame["embedding_hash"]):
        raise dg.Failure("the lens was computed on other embeddings: materialize umap_lens again")
    t = time.perf_counter()
    graph = build_mapper(vectors, lens, config.resolution, config.overlap)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    counts = bootstrap_cluster_counts(vectors, lens, config.bootstrap_resamples, resolution=config.resolution,
                                      overlap=config.overlap)
    stability = judge_stability(counts, len(vectors))
    bootstrap_s = time.perf_counter() - t
    store.put_json("topology/mapper.json", {"nodes": [n.tolist() for n in graph.nodes], "edges": graph.edges,
                                            "lens": lens_name})
    node_xy = [lens[n].mean(axis=0).tolist() for n in graph.nodes]
    png = mapper_picture(node_xy, [len(n) for n in graph.nodes], graph.edges,
                         f"{tenant}: Mapper on {lens_name} ({graph.n_clusters} clusters)")
    store.put("reports/mapper.png", png)
    return dg.MaterializeResult(
        metadata={
            "clusters": graph.n_clusters,
            "edges": len(graph.edges),
            "lens": lens_name,
            "bootstrap_cluster_counts": counts,
            "cluster_count_variance": round(float(np.var(counts)), 3),
            "cluster_count_cv": round(stability.cv, 4),
            "timings": {"build_s": round(build_s, 3), "bootstrap_s": round(bootstrap_s, 3)},
            "mapper_graph": dg.MetadataValue.md(png_markdown(png, "mapper graph")),
        },
        check_results=[dg.AssetCheckResult(
            check_name="mapper_stability", passed=stability.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"cv": round(stability.cv, 4), "limit": STABILITY_LIMIT, "resamples": len(counts),
                      "points": stability.points, "min_points": MIN_POINTS, "judged": stability.judged,
                      "noise_floor_cv": round(stability.noise_floor, 4), "note": stability.note},
            description=stability.note,
        )],
    )
