"""The canary health sensor: every tick it judges each live canary against production over the
router's sliding window. An unhealthy canary is rolled back on the spot (traffic to 0, the
deployment removed, the release recorded as rolled back and a `canary_release` materialization
with the numbers, which the operator sees in the UI); a healthy one gets a `production_release` run."""

import dagster as dg

from datacreek_assets.tenancy import TENANT_TAG
from resources.stores import ServingResource

TRIGGER_TAG = "datacreek/trigger"


@dg.sensor(asset_selection=dg.AssetSelection.assets("production_release"), minimum_interval_seconds=5,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Rolls back a canary whose p99 latency exceeds 2 x production's; requests the promotion "
           "of one that stayed healthy.")
def canary_health_sensor(context: dg.SensorEvaluationContext, serving: ServingResource) -> dg.SensorResult:
    from datacreek_assets.serving.control import ServingError

    control = serving.control()
    try:
        if not control.store.tenants_with_canary():
            return dg.SensorResult(skip_reason="no live canaries")
        outcomes = control.check_canaries(serving.policy())
    except ServingError as err:
        return dg.SensorResult(skip_reason=f"serving is not reachable: {err}")
    finally:
        control.close()
    events, requests = [], []
    for outcome in outcomes:
        verdict = outcome.verdict
        numbers = {k: v for k, v in verdict.numbers().items() if v is not None}
        if outcome.acted:
            context.log.warning(f"{outcome.tenant}-{outcome.version} rolled back: {verdict.reason}")
            events.append(dg.AssetMaterialization(
                asset_key="canary_release", partition=outcome.tenant,
                metadata={"status": "rolled_back", "version": outcome.version, "reason": verdict.reason,
                          **numbers, **outcome.timings_s}))
        elif verdict.action == "promote":
            requests.append(dg.RunRequest(
                run_key=f"promote:{outcome.tenant}:{outcome.version}", partition_key=outcome.tenant,
                asset_selection=[dg.AssetKey("production_release")],
                tags={TENANT_TAG: outcome.tenant, TRIGGER_TAG: "canary-healthy"}))
        else:
            context.log.info(f"{outcome.tenant}-{outcome.version}: {verdict.action}: {verdict.reason}")
    if not events and not requests:
        return dg.SensorResult(skip_reason="; ".join(f"{o.tenant}-{o.version}: {o.verdict.reason}" for o in outcomes)
                               or "no live canaries")
    return dg.SensorResult(run_requests=requests, asset_events=events)
