"""Release assets: canary_release serves the newest passing model to 5 % of the tenant's traffic;
production_release promotes a canary the health sensor found healthy."""

import dagster as dg

from datacreek_assets.automation import downstream_condition
from datacreek_assets.defs.finetune.assets import qa_eval
from datacreek_assets.partitions import tenant_asset
from datacreek_assets.tenancy import validate_tenant_id
from resources.stores import FineTuneResource, ServingResource

# Assets with this tag are left out of a tenant's "materialize everything" run: they act on live
# traffic and are requested by a sensor once the traffic says so.
LAUNCH_TAG = "datacreek/launch"
SENSOR_LAUNCHED = {LAUNCH_TAG: "sensor"}


@tenant_asset(
    automation_condition=downstream_condition(),
    group_name="serving",
    kinds={"ray", "llama.cpp"},
    deps=[qa_eval],
    description="The newest model version that passed its evaluation, served on Ray Serve as the tenant's "
    "canary (base GGUF + the tenant's adapter) with 5 % of its traffic; a first release is compared "
    "against the base model as production.",
)
def canary_release(context: dg.AssetExecutionContext, finetune: FineTuneResource,
                   serving: ServingResource) -> dg.MaterializeResult:
    from datacreek_assets.serving.releases import newest_passing_model

    tenant = validate_tenant_id(context.partition_key)
    candidate = newest_passing_model(finetune.tenant_dir(tenant))
    if candidate is None:
        raise dg.Failure(f"no model of tenant {tenant} has passed its evaluation yet: nothing to release")
    releases = serving.releases(tenant)
    try:
        outcome = releases.release_newest(tenant, candidate)
    finally:
        releases.close()
    return dg.MaterializeResult(
        metadata={**outcome, "deployment": f"{tenant}-{candidate.version}", "run_key": candidate.run_key,
                  "qa_tuned_f1": candidate.tuned_f1},
        data_version=dg.DataVersion(f"{candidate.version}:{outcome['status']}"))


@tenant_asset(
    group_name="serving",
    kinds={"ray"},
    deps=[canary_release],
    tags=SENSOR_LAUNCHED,
    description="The tenant's production model: a canary that stayed healthy for the policy's duration and "
    "volume takes all traffic and the previous version is retired. Requested by canary_health_sensor.",
)
def production_release(context: dg.AssetExecutionContext, serving: ServingResource) -> dg.MaterializeResult:
    from datacreek_assets.serving.control import ReleaseRefused

    tenant = validate_tenant_id(context.partition_key)
    releases = serving.releases(tenant)
    try:
        outcome = releases.promote_ready(tenant)
    except ReleaseRefused as err:
        raise dg.Failure(str(err)) from None
    finally:
        releases.close()
    return dg.MaterializeResult(
        metadata={**outcome, "deployment": f"{tenant}-{outcome['production']}"},
        data_version=dg.DataVersion(outcome["production"]))
