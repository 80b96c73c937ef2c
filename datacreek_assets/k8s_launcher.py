"""K8sRunLauncher and k8s_job_executor that run each tenant's runs and steps in the tenant's own
namespace.

The run's `datacreek/tenant` tag (set by the run coordinator for every run) picks
`tenant-<id>`, where the tenant chart created the `datacreek-run` service account, quotas,
limits and network policies. A run without a valid tenant tag stays in the launcher's
configured namespace (platform jobs such as the purge schedule).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from dagster import DagsterInvalidConfigError, Field, IntSource, executor
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.executor.step_delegating import CheckStepHealthResult, StepDelegatingExecutor
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.executor import K8sStepHandler
from dagster_k8s.job import UserDefinedDagsterK8sConfig, get_k8s_job_name

from datacreek_assets.run_coordinator import check_tenant_tag
from datacreek_assets.tenancy import TENANT_TAG, InvalidTenantId, validate_tenant_id
from datacreek_assets.tenant_credentials import TENANT_SECRET

RUN_SERVICE_ACCOUNT = "datacreek-run"


def tenant_namespace(tenant_id: str) -> str:
    return f"tenant-{validate_tenant_id(tenant_id)}"


def tenant_container_context(run: DagsterRun) -> K8sContainerContext:
    check_tenant_tag(run.tags)  # a tag naming another tenant than the partition is never launched
    try:
        tenant = validate_tenant_id(run.tags.get(TENANT_TAG, ""))
    except InvalidTenantId:
        return K8sContainerContext()
    # the tenant's own credentials (tenant_credentials.TENANT_SECRET) come after the platform's
    # secret in envFrom, so their variables win: its pods hold nothing that reaches another tenant
    return K8sContainerContext(namespace=tenant_namespace(tenant), service_account_name=RUN_SERVICE_ACCOUNT,
                               labels={"datacreek/tenant": tenant}, env_secrets=[TENANT_SECRET])


class TenantNamespaceK8sRunLauncher(K8sRunLauncher):
    def get_container_context_for_run(self, dagster_run: DagsterRun) -> K8sContainerContext:
        return super().get_container_context_for_run(dagster_run).merge(tenant_container_context(dagster_run))


# -- steps ------------------------------------------------------------------------------------
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT_KEYS = {"preemptible", GPU_RESOURCE}
PLACEMENT_LABEL = "datacreek/placement"
GPU_POOL_LABEL = "datacreek/gpu-pool"


def _copy_with_placement(config: dict, placement: str) -> dict:
    out = json.loads(json.dumps(config))
    metadata = out.setdefault("pod_template_spec_metadata", {})
    metadata.setdefault("labels", {})[PLACEMENT_LABEL] = placement
    return out


def on_demand_k8s_config(config: dict) -> dict:
    """A GPU step's pod config pinned to the on-demand GPU pool: it no longer tolerates the spot
    taint and requires `datacreek/gpu-pool=on-demand`, so an eviction cannot hit it twice."""
    out = _copy_with_placement(config, "on-demand")
    pod = out.setdefault("pod_spec_config", {})
    pod["tolerations"] = [t for t in pod.get("tolerations", []) if t.get("key") != "preemptible"]
    pod["affinity"] = {"node_affinity": {"required_during_scheduling_ignored_during_execution": {
        "node_selector_terms": [{"match_expressions": [
            {"key": GPU_POOL_LABEL, "operator": "In", "values": ["on-demand"]}]}]}}}
    return out


def cpu_fallback_k8s_config(config: dict) -> dict:
    """A GPU step's pod config without the GPU: no `nvidia.com/gpu` request or limit, no GPU-pool
    tolerations or affinity, labelled as a CPU fallback. The training code sees no CUDA device
    and loads the base model in 8-bit on CPU (DATACREEK_CPU_FALLBACK)."""
    out = _copy_with_placement(config, "cpu-fallback")
    resources = out.get("container_config", {}).get("resources", {})
    for part in ("requests", "limits"):
        resources.get(part, {}).pop(GPU_RESOURCE, None)
    pod = out.setdefault("pod_spec_config", {})
    pod["tolerations"] = [t for t in pod.get("tolerations", []) if t.get("key") not in GPU_TAINT_KEYS]
    pod.pop("affinity", None)
    return out


def is_gpu_config(config: dict) -> bool:
    resources = config.get("container_config", {}).get("resources", {})
    return any(GPU_RESOURCE in resources.get(part, {}) for part in ("requests", "limits"))


def placement_for_attempt(config: dict, attempt: int) -> dict:
    """Where a GPU step's attempt runs: 0 spot first (the op's own config), 1 on-demand GPU, 2+ CPU."""
    if not is_gpu_config(config) or attempt == 0:
        return config
    return on_demand_k8s_config(config) if attempt == 1 else cpu_fallback_k8s_config(config)


def unschedulable_seconds(pods: list, now: datetime) -> float | None:
    """How long a step Job's live pod has been waiting for a node that fits it (``PodScheduled``
    False, reason ``Unschedulable``), or None while a live pod is scheduled or there is none.
    Pods that already ended (an evicted predecessor) do not count."""
    live = [p for p in pods if p.status and p.status.phase not in ("Succeeded", "Failed")]
    waiting_since = []
    for pod in live:
        scheduled = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
        if pod.status.phase != "Pending" or scheduled is None or scheduled.status != "False" \
                or scheduled.reason != "Unschedulable" or scheduled.last_transition_time is None:
            return None
        waiting_since.append(scheduled.last_transition_time)
    return (now - max(waiting_since)).total_seconds() if waiting_since else None


GPU_PENDING_TIMEOUT_S = 900


class TenantNamespaceK8sStepHandler(K8sStepHandler):
    """The k8s_job_executor's step handler with three changes:

    - every step Job goes to its run's tenant namespace (with the tenant's service account),
      like the run itself (the stock handler uses the launcher's one namespace);
    - a GPU step's retries move down a placement ladder (`placement_for_attempt`): spot first,
      then on-demand GPUs only, then the CPU 8-bit fallback. An evicted step comes back as a
      retry: Dagster refuses to rerun a started attempt in the Job's replacement pod
      (`verify_step`), and the executor's health check sees the Job's failed pod;
    - a GPU step whose pod found no node for ``gpu_pending_timeout_s`` (no capacity in the pool it
      may use) fails its health check while its retry policy has a rung left below it; launching
      the retry deletes the stuck Job. A step on its last rung waits for capacity instead.
    """

    gpu_pending_timeout_s: int = GPU_PENDING_TIMEOUT_S

    @property
    def name(self) -> str:
        return "TenantNamespaceK8sStepHandler"

    def _attempt(self, step_handler_context) -> int:
        known = step_handler_context.execute_step_args.known_state
        return known.get_retry_state().get_attempt_count(self._get_step_key(step_handler_context)) if known else 0

    def _step_job_name(self, step_handler_context, attempt: int) -> str:
        """The name the stock handler gives this step's Job at ``attempt`` (an earlier one here)."""
        key = get_k8s_job_name(step_handler_context.execute_step_args.run_id, self._get_step_key(step_handler_context))
        return f"dagster-step-{key}-{attempt}" if attempt else f"dagster-step-{key}"

    def _get_container_context(self, step_handler_context) -> K8sContainerContext:
        context = super()._get_container_context(step_handler_context).merge(
            tenant_container_context(step_handler_context.dagster_run))
        config = context.run_k8s_config.to_dict()
        placed = placement_for_attempt(config, self._attempt(step_handler_context))
        if placed is config:
            return context
        return context._replace(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(placed))

    def check_step_health(self, step_handler_context) -> CheckStepHealthResult:
        result = super().check_step_health(step_handler_context)
        context = self._get_container_context(step_handler_context)
        if not result.is_healthy or not is_gpu_config(context.run_k8s_config.to_dict()):
            return result
        policy = step_handler_context.get_step_context(self._get_step_key(step_handler_context)).op_retry_policy
        if policy is None or self._attempt(step_handler_context) >= policy.max_retries:
            return result  # no rung left below this one: waiting for capacity beats failing the run
        job_name = self._get_k8s_step_job_name(step_handler_context)
        pods = self._api_client.get_pods_in_job(job_name=job_name, namespace=context.namespace)
        waited = unschedulable_seconds(pods, datetime.now(timezone.utc))
        if waited is None or waited < self.gpu_pending_timeout_s:
            return result
        return CheckStepHealthResult.unhealthy(
            f"no node could take GPU Job {job_name} for {waited:.0f} s (limit {self.gpu_pending_timeout_s} s): "
            "the retry moves to the next placement")

    def launch_step(self, step_handler_context):
        self.delete_leftover_jobs(step_handler_context)
        yield from super().launch_step(step_handler_context)

    def delete_leftover_jobs(self, step_handler_context) -> list[str]:
        """Before a step's Job is created, delete what would stand in its way or compete with it:
        a Job of the same name (a restarted run worker relaunching an unhealthy step), and the
        previous attempt's Job while it still has live pods (one waiting for a GPU that is not
        coming, or an evicted pod's replacement). A previous Job that ended stays, with its logs."""
        namespace = self._get_container_context(step_handler_context).namespace
        attempt = self._attempt(step_handler_context)
        own = self._get_k8s_step_job_name(step_handler_context)
        deleted = [own] if self._api_client.get_job_status(namespace=namespace, job_name=own) else []
        if attempt:
            previous = self._step_job_name(step_handler_context, attempt - 1)
            status = self._api_client.get_job_status(namespace=namespace, job_name=previous)
            if status and status.active:
                deleted.append(previous)
        for job_name in deleted:
            self._api_client.delete_job(job_name=job_name, namespace=namespace)
        return deleted


TENANT_K8S_CONFIG_SCHEMA = {
    **k8s_job_executor.config_schema.config_type.fields,
    "gpu_pending_timeout_seconds": Field(
        IntSource, is_required=False, default_value=GPU_PENDING_TIMEOUT_S,
        description="How long a GPU step's pod may wait for a node before the step is retried "
        "on the next placement (on-demand GPU, then CPU)."),
}


@executor(name="tenant_k8s", config_schema=TENANT_K8S_CONFIG_SCHEMA,
          requirements=multiple_process_executor_requirements())
def tenant_k8s_job_executor(init_context) -> StepDelegatingExecutor:
    """`k8s_job_executor` (same config, plus `gpu_pending_timeout_seconds`) with TenantNamespaceK8sStepHandler."""
    delegating = k8s_job_executor.executor_creation_fn(init_context)
    # same state, our behaviour: the stock handler's constructor already loaded the kube config
    handler = delegating._step_handler
    handler.__class__ = TenantNamespaceK8sStepHandler
    timeout = init_context.executor_config["gpu_pending_timeout_seconds"]
    if timeout < 60:
        raise DagsterInvalidConfigError(
            f"gpu_pending_timeout_seconds is {timeout}: it must be at least 60, or a GPU pod is given up "
            "before the autoscaler could start a node for it", [], timeout)
    handler.gpu_pending_timeout_s = timeout
    return delegating
