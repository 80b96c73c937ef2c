"""Daily purge of soft-deleted graph data older than the undo window."""


from datetime import timedelta

import dagster as dg

from datacreek_assets.embeddings.feature_store import FEATURE_VIEWS
from resources.stores import (
    CurationResource,
    FeatureStoreResource,
    FineTuneResource,
    GraphStoreResource,
    HotGraphResource,
    ObjectStoreResource,
    TenantRegistryResource,
)

UNDO_WINDOW = timedelta(days=30)
RETRAIN_REASON = "retrain_reason"  # an observation of finetuned_adapter asking for a retraining


def purge_tenant(graph, objects, feature_views, tenant_dir=None, now=None,
                 hot_graph=None, review_store=None) -> tuple[int, list[dict], list[str]]:
    """Copies first, then the graph: a failure in between leaves the documents due, so the next
    purge erases them again (every step is idempotent). Returns the nodes purged, each erased
    document's report and the trainings that learnt from them (recorded for model_gc, to be retrained)."""
    from datacreek_assets.erasure.actions import purge_document

    reports, tainted = [], set()
    for doc_id in graph.documents_due_for_purge(UNDO_WINDOW, now):
        entry, trainings = purge_document(graph, objects, feature_views, tenant_dir, doc_id, now, hot_graph,
                                          review_store)
        reports.append(entry)
        tainted |= set(trainings)
    return graph.purge_deleted(UNDO_WINDOW, now), reports, sorted(tainted)


@dg.op(description="Hard-delete data soft-deleted more than 30 days ago, tenant by tenant: the graph, and each "
       "purged document's inbox file, parsed text, screened-out copies, dataset records, vectors, feature-store "
       "values, retrieval passages, review-queue rows, pictures and evaluation examples; each erasure's report is observed on "
       "raw_documents, and a model trained on purged data is sent to retraining.")
def purge_soft_deleted(context: dg.OpExecutionContext, graph_store: GraphStoreResource,
                       tenant_registry: TenantRegistryResource, object_store: ObjectStoreResource,
                       feature_store: FeatureStoreResource, finetune: FineTuneResource,
                       hot_graph: HotGraphResource, curation: CurationResource) -> None:
    registry = tenant_registry.registry()
    try:
        tenants = [t.tenant_id for t in registry.list()]
    finally:
        registry.close()
    failed = []
    with graph_store.admin() as admin:
        for tenant in tenants:
            try:
                hot = hot_graph.store()  # unreachable: this tenant's purge fails, its documents stay due
                purged, reports, tainted = purge_tenant(admin.tenant(tenant), object_store.for_tenant(tenant),
                                                       [feature_store.for_tenant(tenant, view=view)
                                                        for view in FEATURE_VIEWS],
                                                       finetune.tenant_dir(tenant), hot_graph=hot,
                                                       review_store=curation.review_store())
            except Exception as err:  # keep going: one tenant's failure must not spare the others' data
                context.log.error(f"{tenant}: purge failed: {err}")
                failed.append(tenant)
                continue
            context.log.info(f"{tenant}: purged {purged} nodes and the copies of {len(reports)} document(s)")
            for entry in reports:  # the erasure report, on the documents asset's page
                context.log_event(erasure_observation(tenant, entry))
            if tainted:  # purged_data_retrain_sensor requests the tenant's retraining from this
                context.log_event(dg.AssetObservation(
                    asset_key="finetuned_adapter", partition=tenant,
                    metadata={RETRAIN_REASON: "trained on purged data", "purged_trainings": tainted}))
    if failed:
        raise dg.Failure(f"purge failed for {len(failed)} tenant(s): {', '.join(failed)}")


def erasure_observation(tenant: str, entry: dict) -> dg.AssetObservation:
    """An erasure's report (what was removed or hidden where, counts) on ``raw_documents``; the
    document is named by the hash the erasure log keeps."""
    from datacreek_assets.erasure.actions import report_markdown

    return dg.AssetObservation(asset_key="raw_documents", partition=tenant, metadata={
        "erasure": entry["action"], "document_hash": entry["document"],
        "erasure_report": dg.MetadataValue.md(report_markdown(entry)),
        **{f"erasure_{what}": n for what, n in entry["counts"].items()}})


@dg.job(description="Purge soft-deleted data past the 30-day undo window.")
def purge_job():
    purge_soft_deleted()


purge_schedule = dg.ScheduleDefinition(job=purge_job, cron_schedule="17 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
