"""Keeps the `tenants` dynamic partitions in step with the tenant registry.

The cursor is a watermark: the sequence number of the last registry change
applied. Each tick reads the changes after it (at most 1,000), applies the net
effect per tenant as partition add/delete requests, and moves the watermark.
"""

import dagster as dg

from datacreek_assets.partitions import TENANTS_PARTITION, tenant_partitions
from datacreek_assets.tenancy import InvalidTenantId, validate_tenant_id
from resources.stores import TenantRegistryResource


def plan_partition_changes(changes, existing: set[str]) -> tuple[list[str], list[str]]:
    """Net effect of a list of registry changes: (tenants to add, tenants to delete)."""
    last: dict[str, str] = {}
    for change in changes:
        try:
            last[validate_tenant_id(change.tenant_id)] = change.change
        except InvalidTenantId:
            continue  # never turn a bad row into a partition
    add = sorted(t for t, c in last.items() if c == "added" and t not in existing)
    delete = sorted(t for t, c in last.items() if c == "removed" and t in existing)
    return add, delete


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds and removes `tenants` partitions as tenants are registered and removed.",
)
def tenant_partitions_sync(context: dg.SensorEvaluationContext, tenant_registry: TenantRegistryResource) -> dg.SensorResult:
    watermark = int(context.cursor) if context.cursor else 0
    registry = tenant_registry.registry()
    try:
        changes = registry.changes_since(watermark)
    finally:
        registry.close()
    if not changes:
        return dg.SensorResult(cursor=str(watermark))
    existing = set(context.instance.get_dynamic_partitions(TENANTS_PARTITION))
    add, delete = plan_partition_changes(changes, existing)
    requests = []
    if add:
        requests.append(tenant_partitions.build_add_request(add))
    if delete:
        requests.append(tenant_partitions.build_delete_request(delete))
    context.log.info(f"registry changes {watermark + 1}..{changes[-1].seq}: +{len(add)} -{len(delete)} partitions")
    return dg.SensorResult(dynamic_partitions_requests=requests, cursor=str(changes[-1].seq))
