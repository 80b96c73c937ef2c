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
    failed = []
    with graph_store.admin() as admin:
        for tenant in tenants:
            try:
                purged = admin.tenant(tenant).purge_deleted(UNDO_WINDOW)
            except Exception as err:  # keep going: one tenant's failure must not spare the others' data
                context.log.error(f"{tenant}: purge failed: {err}")
                failed.append(tenant)
                continue
            context.log.info(f"{tenant}: purged {purged} nodes")
    if failed:
        raise dg.Failure(f"purge failed for {len(failed)} tenant(s): {', '.join(failed)}")


@dg.job(description="Purge soft-deleted data past the 30-day undo window.")
def purge_job():
    purge_soft_deleted()


purge_schedule = dg.ScheduleDefinition(job=purge_job, cron_schedule="17 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING)
