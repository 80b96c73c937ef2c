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
