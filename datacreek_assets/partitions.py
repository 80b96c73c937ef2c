"""The one partitions definition: a partition per tenant.

Partitions are added by the onboarding path (``datacreek tenant add``), never at import.
"""

import dagster as dg

TENANTS_PARTITION = "tenants"
tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS_PARTITION)
