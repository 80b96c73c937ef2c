"""Retention per tenant: retention_audit (ingest-toxic/ kept no longer than 7 days) and model_gc
(old trainings removed, the best, the live and the newest kept)."""

from datetime import datetime, timezone

import dagster as dg

from datacreek_assets.partitions import tenant_asset
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import FineTuneResource, ObjectStoreResource, ServingResource


@tenant_asset(
    group_name="retention",
    kinds={"s3"},
    deps=["parsed_chunks"],  # in the main job it scans after the run's screened-out copies are written
    description="Scans every stored copy under the tenant's ingest-toxic/ (noncurrent versions included), "
    "deletes those older than 7 days (the bucket's lifecycle rule promises it; moto and the local store "
    "never expire anything, and S3 expires asynchronously) and reports what it found. Daily.",
)
def retention_audit(context: dg.AssetExecutionContext, object_store: ObjectStoreResource) -> dg.MaterializeResult:
    from datacreek_assets.retention.audit import enforce_retention

    tenant = validate_tenant_id(context.partition_key)
    report = enforce_retention(object_store.for_tenant(tenant), area="toxic")
    context.log.info(f"{tenant}: {report.scanned} copies scanned, {report.deleted} deleted past {report.days} days")
    return dg.MaterializeResult(metadata=report.as_metadata())


@dg.asset_check(asset=retention_audit, blocking=True,
                description="The bucket scan shows zero copies older than 7 days under the tenant's ingest-toxic/.")
def nothing_kept_past_retention(context: dg.AssetCheckExecutionContext,
                                object_store: ObjectStoreResource) -> dg.AssetCheckResult:
    from datacreek_assets.retention.audit import scan
    from datacreek_assets.retention.lifecycle import TOXIC_RETENTION_DAYS

    tenant = validate_tenant_id(context.run.tags.get("dagster/partition", ""))
    # judged as of the start of the run: a copy that turns 7 days old between the audit and this
    # scan is the next audit's, not a failure of this one
    started = datetime.fromtimestamp(context.instance.get_run_record_by_id(context.run.run_id).start_time
                                     or datetime.now(timezone.utc).timestamp(), timezone.utc)
    found = scan(object_store.for_tenant(tenant), "toxic", TOXIC_RETENTION_DAYS, started)
    return dg.AssetCheckResult(
        passed=not found.over_limit,
        metadata={"scanned": found.scanned, "older_than_limit": len(found.over_limit),
                  "oldest_age_days": round(found.oldest_age_days, 3) if found.oldest_age_days is not None else None,
                  "examples": [v.key for v in found.over_limit[:5]]},
    )


class ModelGcConfig(dg.Config):
    dry_run: bool = False  # plan and record, delete nothing
    max_age_days: int = 30  # plan_gc refuses less than one day


@tenant_asset(
    group_name="retention",
    kinds={"mlflow"},
    deps=["qa_eval"],
    description="Deletes the tenant's trainings (checkpoints, run folders, GGUF files and their published "
    "adapters, evaluation, MLflow run "
    "artifacts) older than 30 days, except its best by tuned F1, any live in serving and the newest; the plan "
    "is recorded under gc/ before anything goes. Daily, and after each evaluation.",
)
def model_gc(context: dg.AssetExecutionContext, config: ModelGcConfig, finetune: FineTuneResource,
             serving: ServingResource) -> dg.MaterializeResult:
    from datetime import timedelta

    from datacreek_assets.retention.model_gc import collect_garbage

    tenant = validate_tenant_id(context.partition_key)
    store = serving.store()
    try:
        live = list(store.live(tenant).values())
    finally:
        store.close()
    report = collect_garbage(tenant, finetune.tenant_dir(tenant), live, finetune.tracking(tenant),
                             dry_run=config.dry_run, max_age=timedelta(days=config.max_age_days),
                             objects=serving.object_store.for_tenant(tenant) if serving.object_store else None)
    context.log.info(f"{tenant}: {len(report.deleted)} training(s) {'to delete' if report.dry_run else 'deleted'}, "
                     f"{len(report.kept)} kept")
    return dg.MaterializeResult(metadata=report.as_metadata())
