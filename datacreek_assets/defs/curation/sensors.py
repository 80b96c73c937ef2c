"""Curation makes a tenant's dataset stale: the sensor reads `edge_repair_log` past its cursor and,
for each tenant with new decisions, records them on the tenant's knowledge_graph (an observation)
and requests its review queue and SFT dataset again; declarative automation then rebuilds what
follows the dataset (fine-tune, export, eval, release)."""

import json
from collections import Counter

import dagster as dg

from datacreek_assets.defs.retraining.sensors import TRIGGER_TAG, triggered_run_in_flight
from datacreek_assets.partitions import TENANTS_PARTITION, tenant_partitions
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
    # cursor: {"after": every row up to it is handled, "seen": {tenant: its last handled row past "after"}}
    cursor = json.loads(context.cursor) if context.cursor and context.cursor.startswith("{") else {
        "after": int(context.cursor or 0), "seen": {}}
    after, seen = int(cursor["after"]), {t: int(i) for t, i in cursor.get("seen", {}).items()}
    rows = curation.repair_log().decisions_after(after)
    if not rows:
        return dg.SensorResult(cursor=json.dumps({"after": after, "seen": seen}))
    new, first, last = Counter(), {}, {}
    for entry_id, tenant in rows:
        if entry_id <= seen.get(tenant, after):
            continue  # handled by an earlier tick, read again while another tenant waited
        new[tenant] += 1
        first.setdefault(tenant, entry_id)
        last[tenant] = entry_id
    requests, observations, waiting = [], [], []
    for tenant, n in sorted(new.items()):
        try:
            validate_tenant_id(tenant)
        except InvalidTenantId:
            seen[tenant] = last[tenant]
            continue
        if not context.instance.has_dynamic_partition(TENANTS_PARTITION, tenant):
            seen[tenant] = last[tenant]  # a removed tenant: nothing to rebuild
            continue
        if triggered_run_in_flight(context.instance, tenant, "curation"):
            # it may have read the graph already: these rows are read again next tick
            context.log.info(f"{tenant}: {n} new decisions; waiting for the curated rebuild in flight")
            waiting.append(first[tenant])
            continue
        seen[tenant] = last[tenant]
        observations.append(dg.AssetObservation(asset_key="knowledge_graph", partition=tenant,
                                                metadata={"curator_decisions": n, "repair_log_id": last[tenant]}))
        requests.append(dg.RunRequest(run_key=f"curation:{tenant}:{last[tenant]}", partition_key=tenant,
                                      tags={TENANT_TAG: tenant, TRIGGER_TAG: "curation"}))
    after = min(waiting) - 1 if waiting else rows[-1][0]
    seen = {t: i for t, i in seen.items() if i > after}
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"after": after, "seen": seen}),
                           asset_events=observations)
