"""A queued run coordinator that tags every run with its tenant.

Runs reach the queue from the UI, backfills, sensors, schedules and
declarative automation; all of them carry Dagster's `dagster/partition` tag,
and a partition of this code location *is* a tenant. Copying it into
`datacreek/tenant` before the run is queued means per-tenant
`tag_concurrency_limits` and per-tenant cost attribution see every run,
whoever launched it.
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


def tenant_tags_for(run: DagsterRun) -> dict[str, str]:
    """The tenant tag a run should carry, or {} (not partitioned, tagged already, or not a tenant id)."""
    partition = partition_of(run.tags)
    if TENANT_TAG in run.tags or partition is None:
        return {}
    try:
        return {TENANT_TAG: validate_tenant_id(partition)}
    except InvalidTenantId:
        return {}


class TenantTaggingRunCoordinator(QueuedRunCoordinator):
    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        tags = tenant_tags_for(context.dagster_run)
        if tags:
            self._instance.add_run_tags(context.dagster_run.run_id, tags)
            context = SubmitRunContext(self._instance.get_run_by_id(context.dagster_run.run_id), context.workspace)
        return super().submit_run(context)
