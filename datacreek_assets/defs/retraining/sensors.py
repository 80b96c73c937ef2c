"""Drift-driven retraining: the imperative exception to declarative automation.

chunk_embeddings records its drift (metadata and the `embedding_drift` check). This sensor
reads new chunk_embeddings materializations after its cursor (a storage-id watermark) and, for
a critical drift, requests the tenant's retraining job: fine-tune -> GGUF -> eval (and the
release steps that follow them). The run key names the materialization, so no tick ever
requests the same retraining twice, and a tenant that already has a drift retraining queued or
running is not asked again.
"""

import dagster as dg

from datacreek_assets.embeddings.drift import CRITICAL
from datacreek_assets.partitions import tenant_partitions
from datacreek_assets.tenancy import TENANT_TAG, InvalidTenantId, validate_tenant_id

TRIGGER_TAG = "datacreek/trigger"
DETECTED_AT_TAG = "datacreek/drift-detected-at"
RETRAIN_ASSETS = ["finetuned_adapter", "gguf_model", "qa_eval", "canary_release"]
BATCH = 200

retrain_job = dg.define_asset_job(
    "retrain_tenant", selection=dg.AssetSelection.assets(*RETRAIN_ASSETS), partitions_def=tenant_partitions,
    description="Fine-tune, export and evaluate one tenant's model and release it as canary (requested by the "
    "drift sensor).",
)

ACTIVE = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED]


def triggered_run_in_flight(instance: dg.DagsterInstance, tenant: str, trigger: str) -> bool:
    """Whether a run a sensor requested for the tenant (tag datacreek/trigger) is queued or running."""
    runs = instance.get_run_records(dg.RunsFilter(tags={TENANT_TAG: tenant, TRIGGER_TAG: trigger}, statuses=ACTIVE),
                                    limit=1)
    return bool(runs)


@dg.sensor(job=retrain_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Requests a tenant's retraining when its embedding drift is critical (>= 0.1).")
def embedding_drift_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor or 0)
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("chunk_embeddings"), after_storage_id=after),
        limit=BATCH, ascending=True)
    requests, watermark, asked = [], after, set()
    for record in result.records:
        watermark = max(watermark, record.storage_id)
        materialization = record.asset_materialization
        drift = materialization.metadata.get("drift")
        try:
            tenant = validate_tenant_id(materialization.partition or "")
        except InvalidTenantId:
            continue
        if drift is None or drift.value < CRITICAL or tenant in asked:
            continue
        if triggered_run_in_flight(context.instance, tenant, "drift"):
            context.log.info(f"{tenant}: drift {drift.value:.3f} is critical; a retraining is already in flight")
            continue
        asked.add(tenant)
        requests.append(dg.RunRequest(
            run_key=f"drift:{tenant}:{record.storage_id}", partition_key=tenant,
            tags={TENANT_TAG: tenant, TRIGGER_TAG: "drift", DETECTED_AT_TAG: f"{record.timestamp:.3f}",
                  "datacreek/drift": f"{drift.value:.4f}"}))
    return dg.SensorResult(run_requests=requests, cursor=str(watermark))


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Requests a tenant's retraining when the purge erased documents its trainings learnt from.")
def purged_data_retrain_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    from datacreek_assets.defs.graph.schedules import RETRAIN_REASON

    after = int(context.cursor or 0)
    result = context.instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("finetuned_adapter"), after_storage_id=after),
        limit=BATCH, ascending=True)
    requests, watermark, asked = [], after, set()
    for record in result.records:
        watermark = max(watermark, record.storage_id)
        observation = record.asset_observation
        try:
            tenant = validate_tenant_id(observation.partition or "")
        except InvalidTenantId:
            continue
        if RETRAIN_REASON not in observation.metadata or tenant in asked:
            continue
        if triggered_run_in_flight(context.instance, tenant, "erasure"):
            continue
        asked.add(tenant)
        requests.append(dg.RunRequest(run_key=f"erasure:{tenant}:{record.storage_id}", partition_key=tenant,
                                      tags={TENANT_TAG: tenant, TRIGGER_TAG: "erasure"}))
    return dg.SensorResult(run_requests=requests, cursor=str(watermark))
