"""The canary health sensor: every tick it judges each live canary against production over the
router's sliding window. An unhealthy canary is rolled back on the spot (traffic to 0, its
adapter dropped by its pool, the release recorded as rolled back and a `canary_release` materialization
with the numbers, which the operator sees in the UI); a healthy one gets a `production_release` run."""

import time

import dagster as dg

from datacreek_assets.defs.retraining.sensors import TRIGGER_TAG, triggered_run_in_flight
from datacreek_assets.tenancy import TENANT_TAG
from resources.stores import ServingResource

PROMOTION_TRIGGER = "canary-healthy"


@dg.sensor(asset_selection=dg.AssetSelection.assets("production_release"), minimum_interval_seconds=5,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Rolls back a canary whose p99 latency exceeds 2 x production's; requests the promotion "
           "of one that stayed healthy.")
def canary_health_sensor(context: dg.SensorEvaluationContext, serving: ServingResource) -> dg.SensorResult:
    from datacreek_assets.serving.control import ServingError

    control = serving.control()
    try:
        if not control.store.all_routes():  # nothing served: nothing to judge or to reconcile
            return dg.SensorResult(skip_reason="nothing is served")
        outcomes = control.check_canaries(serving.policy())
    except ServingError as err:
        return dg.SensorResult(skip_reason=f"serving is not reachable: {err}")
    finally:
        control.close()
    events, requests, notes = [], [], []
    for outcome in outcomes:
        verdict = outcome.verdict
        name = f"{outcome.tenant}-{outcome.version}"
        if outcome.error is not None:  # this tenant's check failed; the others' went on
            context.log.error(f"{name}: canary check failed: {outcome.error}")
            notes.append(f"{name}: check failed")
            continue
        numbers = {k: v for k, v in verdict.numbers().items() if v is not None}
        if outcome.acted:
            context.log.warning(f"{name} rolled back: {verdict.reason}")
            events.append(dg.AssetMaterialization(
                asset_key="canary_release", partition=outcome.tenant,
                metadata={"status": "rolled_back", "version": outcome.version, "reason": verdict.reason,
                          **numbers, **outcome.timings_s}))
        elif verdict.action == "promote":
            if triggered_run_in_flight(context.instance, outcome.tenant, PROMOTION_TRIGGER):
                notes.append(f"{name}: promotion in flight")
                continue
            # a run key per minute: a promotion that failed (the canary was judged again and was
            # not ready after all) can be asked again later, never twice at once
            requests.append(dg.RunRequest(
                run_key=f"promote:{outcome.tenant}:{outcome.version}:{int(time.time() // 60)}",
                partition_key=outcome.tenant, asset_selection=[dg.AssetKey("production_release")],
                tags={TENANT_TAG: outcome.tenant, TRIGGER_TAG: PROMOTION_TRIGGER}))
        else:  # the tick's skip reason says it (the UI shows it per tick); a log line would repeat it every 5 s
            notes.append(f"{name}: {verdict.action}: {verdict.reason}")
    if not events and not requests:
        return dg.SensorResult(skip_reason="; ".join(notes) or "no live canaries")
    return dg.SensorResult(run_requests=requests, asset_events=events)
