"""K8sRunLauncher and k8s_job_executor that run each tenant's runs and steps in the tenant's own
namespace.

The run's `datacreek/tenant` tag (set by the run coordinator for every run) picks
`tenant-<id>`, where the tenant chart created the `datacreek-run` service account, quotas,
limits and network policies. A run without a valid tenant tag stays in the launcher's
configured namespace (platform jobs such as the purge schedule).
"""

from __future__ import annotations

import json

from dagster import executor
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.executor.step_delegating import StepDelegatingExecutor
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.executor import K8sStepHandler
from dagster_k8s.job import UserDefinedDagsterK8sConfig

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


# -- steps ------------------------------------------------------------------------------------
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEYS = {"preemptible", GPU_RESOURCE}
PLACEMENT_LABEL = "datacreek/placement"


def cpu_fallback_k8s_config(config: dict) -> dict:
    """A GPU step's pod config without the GPU: no `nvidia.com/gpu` request or limit, no GPU-pool
    tolerations or affinity, labelled as a CPU fallback. The training code sees no CUDA device
    and loads the base model in 8-bit on CPU (DATACREEK_CPU_FALLBACK)."""
    out = json.loads(json.dumps(config))
    resources = out.get("container_config", {}).get("resources", {})
    for part in ("requests", "limits"):
        resources.get(part, {}).pop(GPU_RESOURCE, None)
    pod = out.setdefault("pod_spec_config", {})
    pod["tolerations"] = [t for t in pod.get("tolerations", []) if t.get("key") not in GPU_TAINT_KEYS]
    pod.pop("affinity", None)
    metadata = out.setdefault("pod_template_spec_metadata", {})
    metadata.setdefault("labels", {})[PLACEMENT_LABEL] = "cpu-fallback"
    return out


def is_gpu_config(config: dict) -> bool:
    resources = config.get("container_config", {}).get("resources", {})
    return any(GPU_RESOURCE in resources.get(part, {}) for part in ("requests", "limits"))


class TenantNamespaceK8sStepHandler(K8sStepHandler):
    """The k8s_job_executor's step handler with two changes:

    - every step Job goes to its run's tenant namespace (with the tenant's service account),
      like the run itself (the stock handler uses the launcher's one namespace);
    - a GPU step's retry runs without a GPU: its first attempt's Job restarted its pod after
      spot evictions (backoffLimit; the pod prefers spot and may land on on-demand) and still
      failed, so the retry takes the CPU 8-bit fallback instead of waiting for GPU capacity.
    """

    @property
    def name(self) -> str:
        return "TenantNamespaceK8sStepHandler"

    def _get_container_context(self, step_handler_context) -> K8sContainerContext:
        context = super()._get_container_context(step_handler_context).merge(
            tenant_container_context(step_handler_context.dagster_run))
        known = step_handler_context.execute_step_args.known_state
        attempt = known.get_retry_state().get_attempt_count(self._get_step_key(step_handler_context)) if known else 0
        config = context.run_k8s_config.to_dict()
        if attempt >= 1 and is_gpu_config(config):
            return context._replace(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cpu_fallback_k8s_config(config)))
        return context


@executor(name="tenant_k8s", config_schema=k8s_job_executor.config_schema,
          requirements=multiple_process_executor_requirements())
def tenant_k8s_job_executor(init_context) -> StepDelegatingExecutor:
    """`k8s_job_executor` (same config) with TenantNamespaceK8sStepHandler."""
    delegating = k8s_job_executor.executor_creation_fn(init_context)
    # same state, our behaviour: the stock handler's constructor already loaded the kube config
    delegating._step_handler.__class__ = TenantNamespaceK8sStepHandler
    return delegating
