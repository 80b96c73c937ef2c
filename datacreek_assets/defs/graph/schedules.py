"""Daily purge of soft-deleted graph data older than the undo window."""


from datetime import timedelta

import dagster as dg

from datacreek_assets.embeddings.feature_store import FEATURE_VIEWS
from resources.stores import (
    FeatureStoreResource,
    FineTuneResource,
    GraphStoreResource,
    ObjectStoreResource,
    TenantRegistryResource,
)

UNDO_WINDOW = timedelta(days=30)
RETRAIN_REASON = "retrain_reason"  # an observation of finetuned_adapter asking for a retraining


def purge_tenant(graph, objects, feature_views, tenant_dir=None, now=None) -> tuple[int, int, list[str]]:
    """Copies first, then the graph: a failure in between leaves the documents due, so the next
    purge erases them again (every step is idempotent). Returns the nodes purged, the documents
    erased and the trainings that learnt from them (recorded for model_gc, to be retrained)."""
    from datacreek_assets.erasure.documents import (
        dataset_versions_with,
        log_erasure,
        mark_purged_trainings,
        purge_copies,
        trainings_with,
    )
    from datacreek_assets.retrieval.index import erase_document

    due = graph.documents_due_for_purge(UNDO_WINDOW, now)
    tainted: set[str] = set()
    for doc_id in due:
        texts = graph.document_chunk_texts(doc_id)
        if tenant_dir is not None:
            tainted |= set(trainings_with(tenant_dir, dataset_versions_with(objects, doc_id, texts)))
        counts = purge_copies(objects, feature_views, doc_id, texts)
        if tenant_dir is not None:
            counts["retrieval_passages"] = erase_document(tenant_dir / "retrieval", graph.tenant_id, doc_id)
        log_erasure(objects, "purge", doc_id, counts, now)
    if tainted:
        mark_purged_trainings(tenant_dir, sorted(tainted))
    return graph.purge_deleted(UNDO_WINDOW, now), len(due), sorted(tainted)


@dg.op(description="Hard-delete data soft-deleted more than 30 days ago, tenant by tenant: the graph, and each "
       "purged document's inbox file, parsed text, screened-out copies, feature-store values and retrieval passages.")
def purge_soft_deleted(context: dg.OpExecutionContext, graph_store: GraphStoreResource,
                       tenant_registry: TenantRegistryResource, object_store: ObjectStoreResource,
                       feature_store: FeatureStoreResource, finetune: FineTuneResource) -> None:
    registry = tenant_registry.registry()
    try:
        tenants = [t.tenant_id for t in registry.list()]
    finally:
        registry.close()
    failed = []
    with graph_store.admin() as admin:
        for tenant in tenants:
            try:
                purged, erased, tainted = purge_tenant(admin.tenant(tenant), object_store.for_tenant(tenant),
                                                       [feature_store.for_tenant(tenant, view=view)
                                                        for view in FEATURE_VIEWS],
                                                       finetune.tenant_dir(tenant))
            except Exception as err:  # keep going: one tenant's failure must not spare the others' data
                context.log.error(f"{tenant}: purge failed: {err}")
                failed.append(tenant)
                continue
            context.log.info(f"{tenant}: purged {purged} nodes and the copies of {erased} document(s)")
            if tainted:  # purged_data_retrain_sensor requests the tenant's retraining from this
                context.log_event(dg.AssetObservation(
                    asset_key="finetuned_adapter", partition=tenant,
                    metadata={RETRAIN_REASON: "trained on purged data", "purged_trainings": tainted}))
    if failed:
        raise dg.Failure(f"purge failed for {len(failed)} tenant(s): {', '.join(failed)}")


@dg.job(description="Purge soft-deleted data past the 30-day undo window.")
def purge_job():
    purge_soft_deleted()


purge_schedule = dg.ScheduleDefinition(job=purge_job, cron_schedule="17 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
