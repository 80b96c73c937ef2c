"""edge_review_queue: the facts a curator should look at first, in the review store."""

import dagster as dg

from datacreek_assets.automation import downstream_condition
from datacreek_assets.defs.graph.assets import knowledge_graph
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.pictures import delta_lambda_picture, png_markdown
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import CurationResource, GraphStoreResource


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="curation",
    kinds={"python", "sql"},
    deps=[knowledge_graph],
    description="Undecided facts scored by Δλ (how much removing each would move the smallest eigenvalues of "
    "the entity graph's normalized Laplacian; the top exact, doubtful estimates flagged), queued when Δλ reaches "
    "the tenant's τ or the extraction is doubtful, with their evidence; what /ui/edge_review shows curators.",
)
def edge_review_queue(context: dg.AssetExecutionContext, graph_store: GraphStoreResource,
                      curation: CurationResource) -> dg.MaterializeResult:
    from datacreek_assets.curation.review import refresh_queue

    tenant = validate_tenant_id(context.partition_key)
    store = curation.review_store()
    tau = store.tau(tenant, curation.tau)
    with graph_store.tenant(tenant) as graph:
        summary = refresh_queue(graph, store, tau, curation.queue_limit)
    context.log.info(f"{summary.queued} of {summary.undecided} undecided facts queued (τ = {tau:g})")
    # fact ids and scores only: the queue's text lives in the review store, which erasure reaches
    top = "\n".join(f"| {i.fact_id} | {i.score:.3g} | {'exact' if i.exact else 'estimate'} | "
                    f"{'' if i.trusted else i.reason} | {i.confidence:.2f} |" for i in summary.top)
    return dg.MaterializeResult(
        metadata={
            "queued": summary.queued, "undecided_facts": summary.undecided, "live_facts": summary.facts,
            "tau": tau, "queued_structural": summary.structural, "queued_low_confidence": summary.low_confidence,
            "untrusted_estimates": summary.untrusted, "queue_version": summary.version,
            "top": dg.MetadataValue.md("| fact | Δλ | score | distrust | confidence |\n|---|---|---|---|---|\n" + top),
            "delta_lambda": dg.MetadataValue.md(png_markdown(
                delta_lambda_picture(summary.scores, tau, f"{tenant}: Δλ of undecided facts"), "Δλ")),
        },
        data_version=dg.DataVersion(summary.version),
    )
