"""The one partitions definition: a partition per tenant.

Partitions are added by the onboarding path (``datacreek tenant add``), never at import.
"""

import dagster as dg

TENANTS_PARTITION = "tenants"
tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS_PARTITION)

# Backfill policy, the same for every asset group: one run per tenant. Every asset reads and
# writes tenant-scoped stores, and a run is the unit Dagster tags, limits, bills, fails and
# retries: batching tenants into one run would let one tenant's hostile document fail its
# batch-mates, put several tenants under one `datacreek/tenant` tag (breaking the per-tenant
# concurrency limit and cost attribution) and make "retry only what failed" re-run healthy
# tenants. The per-run price is kept down by the executor instead (see defs.executor_for).
PER_TENANT_RUNS = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)


def tenant_asset(**kwargs):
    """`dg.asset`, partitioned by tenant with the per-tenant backfill policy: every asset here is."""
    return dg.asset(partitions_def=tenant_partitions, backfill_policy=PER_TENANT_RUNS, **kwargs)
