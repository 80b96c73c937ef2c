"""K8sRunLauncher that runs each tenant's runs in the tenant's own namespace.

The run's `datacreek/tenant` tag (set by the run coordinator for every run) picks
`tenant-<id>`, where the tenant chart created the `datacreek-run` service account, quotas,
limits and network policies. A run without a valid tenant tag stays in the launcher's
configured namespace (platform jobs such as the purge schedule).
"""

from __future__ import annotations

from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext

from datacreek_assets.tenancy import TENANT_TAG, InvalidTenantId, validate_tenant_id

RUN_SERVICE_ACCOUNT = "datacreek-run"


def tenant_namespace(tenant_id: str) -> str:
    return f"tenant-{validate_tenant_id(tenant_id)}"


def tenant_container_context(run: DagsterRun) -> K8sContainerContext:
    try:
        tenant = validate_tenant_id(run.tags.get(TENANT_TAG, ""))
    except InvalidTenantId:
        return K8sContainerContext()
    return K8sContainerContext(namespace=tenant_namespace(tenant), service_account_name=RUN_SERVICE_ACCOUNT,
                               labels={"datacreek/tenant": tenant})


class TenantNamespaceK8sRunLauncher(K8sRunLauncher):
    def get_container_context_for_run(self, dagster_run: DagsterRun) -> K8sContainerContext:
        return super().get_container_context_for_run(dagster_run).merge(tenant_container_context(dagster_run))
