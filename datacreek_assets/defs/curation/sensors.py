"""Curation makes a tenant's dataset stale: the sensor reads `edge_repair_log` past its cursor and,
for each tenant with new decisions, records them on the tenant's knowledge_graph (an observation)
and requests its review queue and SFT dataset again; declarative automation then rebuilds what
follows the dataset (fine-tune, export, eval, release)."""

from collections import Counter

import dagster as dg

from datacreek_assets.defs.retraining.sensors import TRIGGER_TAG, triggered_run_in_flight
from datacreek_assets.partitions import tenant_partitions
from datacreek_assets.tenancy import TENANT_TAG, InvalidTenantId, validate_tenant_id
from resources.stores import CurationResource

CURATED_ASSETS = ["edge_review_queue", "sft_dataset"]

curated_rebuild_job = dg.define_asset_job(
    "curated_rebuild", selection=dg.AssetSelection.assets(*CURATED_ASSETS), partitions_def=tenant_partitions,
    description="A tenant's review queue and SFT dataset again, after curators decided on its edges (requested by "
    "the curation sensor).",
)


@dg.sensor(job=curated_rebuild_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Rebuilds a tenant's review queue and SFT dataset after curator decisions (edge_repair_log).")
def curation_sensor(context: dg.SensorEvaluationContext, curation: CurationResource) -> dg.SensorResult:
    after = int(context.cursor or 0)
    rows = curation.repair_log().decisions_after(after)
    if not rows:
        return dg.SensorResult(cursor=str(after))
    decided, last, first = Counter(), {}, {}
    for entry_id, tenant in rows:
        try:
            tenant = validate_tenant_id(tenant)
        except InvalidTenantId:
            continue
        decided[tenant] += 1
        last[tenant] = entry_id
        first.setdefault(tenant, entry_id)
    requests, observations, deferred = [], [], []
    for tenant, n in sorted(decided.items()):
        if triggered_run_in_flight(context.instance, tenant, "curation"):
            # it may have read the graph already: these rows are read again next tick
            context.log.info(f"{tenant}: {n} new decisions; waiting for the curated rebuild in flight")
            deferred.append(first[tenant])
            continue
        observations.append(dg.AssetObservation(asset_key="knowledge_graph", partition=tenant,
                                                metadata={"curator_decisions": n, "repair_log_id": last[tenant]}))
        # keyed by the tenant's last decision: rows read again (another tenant deferred) ask nothing twice
        requests.append(dg.RunRequest(run_key=f"curation:{tenant}:{last[tenant]}", partition_key=tenant,
                                      tags={TENANT_TAG: tenant, TRIGGER_TAG: "curation"}))
    cursor = min(deferred) - 1 if deferred else rows[-1][0]
    return dg.SensorResult(run_requests=requests, cursor=str(cursor), asset_events=observations)
