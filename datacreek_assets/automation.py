"""Declarative automation and GPU concurrency for the asset graph.

- Downstream assets are `eager`: when a tenant's upstream partition is updated, that tenant's
  downstream partitions are requested. `eager` does not fire for history when automation is
  (re)activated, and waits while a dependency is still running (tested).
- GPU-heavy assets additionally hold off while a backfill targets them (the backfill brings
  them up to date itself), and run in the `gpu` concurrency pool, whose slot count is the
  number of GPUs: a wide backfill queues behind it instead of oversubscribing the GPUs.
- The drift and quota sensors (their own issue) are the imperative exceptions.
"""

from __future__ import annotations

import dagster as dg

GPU_POOL = "gpu"
# How a GPU step's pod looks under the k8s_job_executor (prod): one GPU, tolerates the spot
# pool's taint, must land on a GPU pool and prefers spot (on-demand when spot has no capacity).
# An evicted step comes back as a retry of the op (Dagster does not rerun a started attempt in
# the Job's replacement pod); retries move to on-demand, then to CPU
# (k8s_launcher.placement_for_attempt).
GPU_K8S_CONFIG = {
    "container_config": {"resources": {
        "requests": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "24Gi"},
        "limits": {"nvidia.com/gpu": "1", "cpu": "8", "memory": "48Gi"}}},
    "pod_spec_config": {
        "restart_policy": "OnFailure",
        "tolerations": [
            {"key": "preemptible", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"node_affinity": {
            "required_during_scheduling_ignored_during_execution": {"node_selector_terms": [
                {"match_expressions": [{"key": "datacreek/gpu-pool", "operator": "In",
                                        "values": ["spot", "on-demand"]}]}]},
            "preferred_during_scheduling_ignored_during_execution": [
                {"weight": 100, "preference": {"match_expressions": [
                    {"key": "datacreek/gpu-pool", "operator": "In", "values": ["spot"]}]}}]}}},
    "job_spec_config": {"backoff_limit": 3},
}
GPU_OP_TAGS = {"dagster-k8s/config": GPU_K8S_CONFIG}
# A CPU-heavy step (the MiniLM embedder runs on CPU): a pod that asks for no GPU, so no GPU sits
# allocated and unbilled while it runs; it is metered as CPU minutes.
CPU_K8S_CONFIG = {
    "container_config": {"resources": {"requests": {"cpu": "4", "memory": "8Gi"},
                                       "limits": {"cpu": "8", "memory": "16Gi"}}},
    "job_spec_config": {"backoff_limit": 3},
}
CPU_OP_TAGS = {"dagster-k8s/config": CPU_K8S_CONFIG}
AUTOMATION_TAGS = {"datacreek/launched-by": "automation"}


def downstream_condition() -> dg.AutomationCondition:
    return dg.AutomationCondition.eager()


def gpu_condition() -> dg.AutomationCondition:
    return dg.AutomationCondition.eager() & ~dg.AutomationCondition.backfill_in_progress()


def set_gpu_slots(instance: dg.DagsterInstance, slots: int) -> None:
    """How many GPU steps may run at once across every run of this instance."""
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, slots)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "datacreek_automation",
    target=dg.AssetSelection.all(),
    run_tags=AUTOMATION_TAGS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
