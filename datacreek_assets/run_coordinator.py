"""A queued run coordinator that tags every run with its tenant.

Runs reach the queue from the UI, backfills, sensors, schedules and
declarative automation; all of them carry Dagster's `dagster/partition` tag,
and a partition of this code location *is* a tenant. Copying it into
`datacreek/tenant` before the run is queued means per-tenant
`tag_concurrency_limits` and per-tenant cost attribution see every run,
whoever launched it.

The partition decides: a run whose `datacreek/tenant` tag names another tenant than its
partition is refused (marked failed before it is queued), since the launcher picks the
namespace, quota and volumes from the tag while the run writes its partition's data.
"""

from __future__ import annotations

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun

from datacreek_assets.tenancy import TENANT_TAG, InvalidTenantId, validate_tenant_id

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG, RANGE_END_TAG = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def partition_of(tags: dict[str, str]) -> str | None:
    """The one partition a run covers: `dagster/partition`, or a range of one partition (what
    backfills with a backfill policy, and automation, tag their runs with)."""
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    return start if start is not None and start == end else None


class TenantTagMismatch(ValueError):
    pass


def partition_tenant(tags: dict[str, str]) -> str | None:
    """The tenant a run's partition names, or None (not partitioned, or not a tenant id)."""
    partition = partition_of(tags)
    if partition is None:
        return None
    try:
        return validate_tenant_id(partition)
    except InvalidTenantId:
        return None


def check_tenant_tag(tags: dict[str, str]) -> None:
    """Refuse a `datacreek/tenant` tag that disagrees with the run's tenant partition, or that
    puts a run over several tenants' partitions in one tenant's namespace."""
    if TENANT_TAG not in tags:
        return
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if PARTITION_TAG not in tags and start is not None and start != end:
        raise TenantTagMismatch(f"the run covers partitions {start!r} to {end!r}: it cannot carry the "
                                f"{TENANT_TAG} tag {tags[TENANT_TAG]!r} of one tenant")
    tenant = partition_tenant(tags)
    if tenant is not None and tags[TENANT_TAG] != tenant:
        raise TenantTagMismatch(f"the run's {TENANT_TAG} tag {tags[TENANT_TAG]!r} is not its partition "
                                f"{tenant!r}: the partition decides the tenant; remove the tag or fix it")


def tenant_tags_for(run: DagsterRun) -> dict[str, str]:
    """The tenant tag a run should carry, or {} (not partitioned, tagged already, or not a tenant id).
    Raises TenantTagMismatch for a tag naming another tenant than the partition."""
    check_tenant_tag(run.tags)
    tenant = partition_tenant(run.tags)
    if TENANT_TAG in run.tags or tenant is None:
        return {}
    return {TENANT_TAG: tenant}


class TenantTaggingRunCoordinator(QueuedRunCoordinator):
    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        try:
            tags = tenant_tags_for(context.dagster_run)
        except TenantTagMismatch as err:
            self._instance.report_run_failed(context.dagster_run, str(err))
            return self._instance.get_run_by_id(context.dagster_run.run_id)
        if tags:
            self._instance.add_run_tags(context.dagster_run.run_id, tags)
            context = SubmitRunContext(self._instance.get_run_by_id(context.dagster_run.run_id), context.workspace)
        return super().submit_run(context)
