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


def tenant_tags_for(run: DagsterRun) -> dict[str, str]:
    """The tenant tag a run should carry, or {} (not partitioned, tagged already, or not a tenant id)."""
    if TENANT_TAG in run.tags or PARTITION_TAG not in run.tags:
        return {}
    try:
        return {TENANT_TAG: validate_tenant_id(run.tags[PARTITION_TAG])}
    except InvalidTenantId:
        return {}


class TenantTaggingRunCoordinator(QueuedRunCoordinator):
    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        tags = tenant_tags_for(context.dagster_run)
        if tags:
            self._instance.add_run_tags(context.dagster_run.run_id, tags)
            context = SubmitRunContext(self._instance.get_run_by_id(context.dagster_run.run_id), context.workspace)
        return super().submit_run(context)
