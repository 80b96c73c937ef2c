"""The daily retention audit and model GC, one run per tenant (each in its own namespace, with its own credentials)."""

from datetime import datetime, timezone

import dagster as dg

from datacreek_assets.defs.retraining.sensors import TRIGGER_TAG
from datacreek_assets.partitions import TENANTS_PARTITION, tenant_partitions
from datacreek_assets.tenancy import TENANT_TAG

retention_job = dg.define_asset_job(
    "retention_job", selection=dg.AssetSelection.assets("retention_audit", "model_gc"),
    partitions_def=tenant_partitions,
    description="Delete and report what a tenant keeps past its retention: ingest-toxic/ copies, old trainings.",
)


@dg.schedule(job=retention_job, cron_schedule="37 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Daily: every tenant's retention audit and model GC.")
def retention_schedule(context: dg.ScheduleEvaluationContext):
    day = (context.scheduled_execution_time or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
    return [dg.RunRequest(run_key=f"retention:{tenant}:{day}", partition_key=tenant,
                          tags={TENANT_TAG: tenant, TRIGGER_TAG: "schedule"})
            for tenant in context.instance.get_dynamic_partitions(TENANTS_PARTITION)]
