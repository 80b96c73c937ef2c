"""retrieval_index: the tenant's chunks searchable by vector, for grounded training and serving."""

import time

import dagster as dg

from datacreek_assets.automation import downstream_condition
from datacreek_assets.defs.embeddings.assets import embedding_features
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import FeatureStoreResource, FineTuneResource, GraphStoreResource

LATENCY_PROBES = 50


def retrieval_dir(finetune: FineTuneResource, tenant: str):
    """Beside the tenant's models: the serving router reads it from the same volume."""
    return finetune.tenant_dir(tenant) / "retrieval"


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="retrieval",
    kinds={"numpy"},
    deps=[embedding_features],
    description="The tenant's live chunks with their vectors read back from the feature store (fp8, "
    "dequantized), searched exactly by inner product: the passages of grounded training records and "
    "of every served request. Rebuilt whenever embedding_features materializes.",
)
def retrieval_index(context: dg.AssetExecutionContext, feature_store: FeatureStoreResource,
                    graph_store: GraphStoreResource, finetune: FineTuneResource) -> dg.MaterializeResult:
    import numpy as np

    from datacreek_assets.embeddings.question_encoder import embed_question
    from datacreek_assets.retrieval.index import build_index, publish

    tenant = validate_tenant_id(context.partition_key)
    with graph_store.tenant(tenant) as graph:
        chunks = graph.live_chunks()
    index, skipped = build_index(tenant, feature_store.for_tenant(tenant).stored_rows(), chunks)
    path = publish(index, retrieval_dir(finetune, tenant))
    # what a served request pays: embed one question, search (first sentences of chunks as questions)
    probes = [c["text"].split(". ")[0][:200] for c in chunks[:LATENCY_PROBES]]
    embed_question("warm up")  # load the model once, outside the timing
    timings, self_hits = [], 0
    for chunk, probe in zip(chunks, probes):
        started = time.perf_counter()
        found = index.search(embed_question(probe), k=3, question=probe)
        timings.append(time.perf_counter() - started)
        self_hits += any(p.chunk_id == chunk["chunk_id"] for p in found)
    return dg.MaterializeResult(
        metadata={
            "chunks": len(index),
            "skipped_not_live": skipped,
            "version": index.version,
            "path": str(path),
            "probe_questions": len(probes),
            "probe_source_in_top3": round(self_hits / len(probes), 3) if probes else None,
            "query_p50_ms": round(float(np.percentile(timings, 50)) * 1000, 2) if timings else None,
            "query_p99_ms": round(float(np.percentile(timings, 99)) * 1000, 2) if timings else None,
        },
        data_version=dg.DataVersion(index.version),
    )
