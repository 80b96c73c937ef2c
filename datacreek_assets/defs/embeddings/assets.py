"""chunk_embeddings (MiniLM vectors, computed only for new text) and
embedding_features (fp8 vectors in the Feast offline and online stores)."""

import io
import time

import dagster as dg

from datacreek_assets.automation import CPU_OP_TAGS, downstream_condition, gpu_condition
import numpy as np

from datacreek_assets.defs.graph.assets import knowledge_graph
from datacreek_assets.embeddings import VECTORS_KEY
from datacreek_assets.embeddings.embedder import MODEL_ID, embedding_hash
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import CreditLedgerResource, FeatureStoreResource, GraphStoreResource, ObjectStoreResource

# Statistics of the newest embeddings, and the reference drift is measured against: the data
# the released model was trained on (moved by qa_eval when a tuned model passes its gate).
LATEST_STATS_KEY = "embeddings/stats/latest.npz"
REFERENCE_KEY = "embeddings/stats/reference.npz"
DRIFT_CHECK = "embedding_drift"


class EmbeddingConfig(dg.Config):
    threads: int = 1  # torch intra-op threads; two cores are shared by everything here
    token_budget: int = 2048  # tokens per batch (batch x longest); small batches stay in CPU cache (bench/embeddings.py)
    # "auto": bfloat16 where it is faster than fp32 (AMX), else fp32; or "fp32", "bf16"
    precision: str = "auto"


def read_vectors(store):
    """The tenant's stored embeddings: (frame without vectors, float32 matrix)."""
    import pandas as pd

    if not store.exists(VECTORS_KEY):
        return pd.DataFrame(columns=["embedding_hash", "chunk_id", "doc_id", "vector"]), np.zeros((0, 384), np.float32)
    frame = pd.read_parquet(io.BytesIO(store.get(VECTORS_KEY)))
    matrix = np.frombuffer(b"".join(frame["vector"]), dtype=np.float32).reshape(len(frame), -1) if len(frame) else np.zeros((0, 384), np.float32)
    return frame, matrix


@tenant_asset(
    automation_condition=gpu_condition(),  # heavy: waits for a backfill in progress like the GPU steps
    op_tags=CPU_OP_TAGS,  # the embedder runs on CPU: its pod asks for no GPU (none allocated unbilled)
    group_name="embeddings",
    kinds={"pytorch"},
    deps=[knowledge_graph],
    check_specs=[dg.AssetCheckSpec(DRIFT_CHECK, asset="chunk_embeddings",
                                   description="drift of the newest embeddings against the reference "
                                   "(embeddings/drift.py): WARN from 0.07, ERROR from 0.1")],
    description="all-MiniLM-L6-v2 vectors of the tenant's live chunks; only hashes not yet stored are "
    "computed. Statistics of the newest embeddings and their drift from the reference are recorded.",
)
def chunk_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, graph_store: GraphStoreResource,
                     object_store: ObjectStoreResource, credit_ledger: CreditLedgerResource) -> dg.MaterializeResult:
    import pandas as pd

    from datacreek_assets.embeddings.embedder import embed_texts, resolve_precision
    from datacreek_assets.embeddings.fp8 import dequantize, quantize, rounding_weights
    from datacreek_assets.embeddings.drift import drift_score
    from datacreek_assets.embeddings.stats import from_npz, recall_at_k, reference_statistics, to_npz

    tenant = validate_tenant_id(context.partition_key)
    precision = resolve_precision(config.precision)  # a wrong value fails before any work
    store = object_store.for_tenant(tenant)
    timings = {}
    started = time.perf_counter()
    with graph_store.tenant(tenant) as graph:
        chunks = graph.live_chunks()
    hashes = [embedding_hash(c["text"]) for c in chunks]
    old, old_matrix = read_vectors(store)
    known = {h: i for i, h in enumerate(old["embedding_hash"])}
    todo = sorted({h: c for h, c in zip(hashes, chunks) if h not in known}.items())
    timings["read_s"] = round(time.perf_counter() - started, 3)
    t = time.perf_counter()
    with credit_ledger.metered(context, tenant, gpus=0):  # the embedder runs on CPU here
        new_vectors = embed_texts([c["text"] for _, c in todo], threads=config.threads,
                                  token_budget=config.token_budget, precision=precision)
    timings["embed_s"] = round(time.perf_counter() - t, 3)
    fresh = {h: new_vectors[i] for i, (h, _) in enumerate(todo)}
    rows, vectors, seen = [], [], set()
    for h, c in zip(hashes, chunks):
        if h in seen:
            continue
        seen.add(h)
        vector = fresh[h] if h in fresh else old_matrix[known[h]]
        rows.append({"embedding_hash": h, "chunk_id": c["chunk_id"], "doc_id": c["doc_id"]})
        vectors.append(vector)
    with graph_store.tenant(tenant) as graph:  # a document deleted while this run embedded stays out
        deleted = {d for d, state in graph.document_states().items() if state["deleted_at"] is not None}
    keep = [i for i, row in enumerate(rows) if row["doc_id"] not in deleted]
    rows, vectors = [rows[i] for i in keep], [vectors[i] for i in keep]
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    frame = pd.DataFrame(rows)
    frame["vector"] = [v.tobytes() for v in matrix]
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    store.put(VECTORS_KEY, buffer.getvalue())
    stats = reference_statistics(matrix)
    store.put(LATEST_STATS_KEY, to_npz(stats))
    if not store.exists(REFERENCE_KEY):  # the first embeddings of a tenant are its reference
        store.put(REFERENCE_KEY, to_npz(stats))
    t = time.perf_counter()
    drift = drift_score(from_npz(store.get(REFERENCE_KEY)), matrix)
    timings["drift_s"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    # as embedding_features will store them: rounded with this tenant's vectors as the weights
    blobs, scales = quantize(matrix, rounding_weights(matrix)) if len(matrix) else ([], np.zeros(0))
    recall = recall_at_k(matrix, dequantize(blobs, scales), k=10) if len(matrix) > 10 else 1.0
    timings["recall_s"] = round(time.perf_counter() - t, 3)
    return dg.MaterializeResult(
        metadata={
            "model": MODEL_ID,
            "vectors": len(matrix),
            "computed": len(todo),
            "precision": precision if todo else "none computed",  # of the vectors this run computed
            "reused": len(matrix) - len([h for h in fresh if h in seen]),
            "dropped_not_live": len(set(known) - seen),
            # the stored float32 vectors (computed in fp32, or bf16 on AMX) against their fp8 copies
            "recall_at_10_fp8_vs_fp32": round(recall, 4),
            "bytes_per_vector_fp32": int(matrix.shape[1] * 4) if len(matrix) else 1536,
            "bytes_per_vector_fp8": int(matrix.shape[1] + 4) if len(matrix) else 388,  # + float32 scale
            "reference_stats": store.key(REFERENCE_KEY),
            **drift.as_metadata(),
            "timings": timings,
        },
        check_results=[drift_check_result(drift)],
    )


def drift_check_result(drift) -> dg.AssetCheckResult:
    """ok: passed; warn: failed with WARN severity; critical: failed with ERROR (the drift sensor retrains)."""
    return dg.AssetCheckResult(
        check_name=DRIFT_CHECK, passed=drift.level == "ok",
        severity=dg.AssetCheckSeverity.ERROR if drift.level == "critical" else dg.AssetCheckSeverity.WARN,
        metadata=drift.as_metadata())


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="embeddings",
    kinds={"feast"},
    deps=[chunk_embeddings],
    description="fp8 (e4m3) vectors with per-vector scales in Feast, keyed by (tenant_id, embedding_hash), "
    "rounded with error feedback weighted by the tenant's vectors; written to the offline parquet store "
    "and materialized into the online store. Vectors of chunks that are no longer live are marked "
    "deleted and excluded from lookups.",
)
def embedding_features(context: dg.AssetExecutionContext, object_store: ObjectStoreResource, feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    from datacreek_assets.embeddings.fp8 import quantize, rounding_weights

    tenant = validate_tenant_id(context.partition_key)
    frame, matrix = read_vectors(object_store.for_tenant(tenant))
    features = feature_store.for_tenant(tenant)
    # a row hidden by delete-document comes back by undo only, even if a chunk_embeddings run that
    # started before the delete wrote it to the vectors file again
    new_mask = ~frame["embedding_hash"].isin(features.live_values().keys() | features.hidden_hashes())
    # the new vectors' rounding errors are weighted by all the tenant's current vectors (fp8.py)
    blobs, scales = quantize(matrix[new_mask.to_numpy()], rounding_weights(matrix)) if new_mask.any() else ([], [])
    upserts = frame.loc[new_mask, ["embedding_hash", "chunk_id", "doc_id"]].assign(
        vector_fp8=blobs, scale=np.asarray(scales, dtype=np.float32), deleted=False)
    new_rows, gone = features.sync(upserts, keep=set(frame["embedding_hash"]))
    # read a few back through the online store and compare with the float32 vectors
    probe = list(frame["embedding_hash"][:8])
    found = features.lookup(probe)
    errors = [float(np.abs(found[h] - matrix[i]).max()) for i, h in enumerate(probe) if found[h] is not None]
    return dg.MaterializeResult(
        metadata={
            "rows_written": new_rows + gone,
            "new_vectors": new_rows,
            "marked_deleted": gone,
            "online_probe_found": f"{len(errors)}/{len(probe)}",
            "online_probe_max_abs_error": round(max(errors), 5) if errors else 0.0,
            "offline_path": features.offline_path,
        }
    )
