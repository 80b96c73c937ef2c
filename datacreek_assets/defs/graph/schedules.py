"""Daily purge of soft-deleted graph data older than the undo window."""


from datetime import timedelta

import dagster as dg

from resources.stores import GraphStoreResource, TenantRegistryResource

UNDO_WINDOW = timedelta(days=30)


@dg.op(description="Hard-delete graph data soft-deleted more than 30 days ago, tenant by tenant.")
def purge_soft_deleted(context: dg.OpExecutionContext, graph_store: GraphStoreResource, tenant_registry: TenantRegistryResource) -> None:
    registry = tenant_registry.registry()
    try:
        tenants = [t.tenant_id for t in registry.list()]
    finally:
        registry.close()
    with graph_store.admin() as admin:
        for tenant in tenants:
            purged = admin.tenant(tenant).purge_deleted(UNDO_WINDOW)
            context.log.info(f"{tenant}: purged {purged} nodes")


@dg.job(description="Purge soft-deleted data past the 30-day undo window.")
def purge_job():
    purge_soft_deleted()


purge_schedule = dg.ScheduleDefinition(job=purge_job, cron_schedule="17 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
