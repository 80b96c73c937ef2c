"""Adding and removing a tenant across every store.

Order matters: on add, every store's scope is created first and the Dagster
partition last, so a half-onboarded tenant never shows up as runnable; every
step is idempotent, so rerunning a failed add completes it. On remove, the
partition goes first (no new runs), then the data, then the registry row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from dagster import DagsterInstance

from datacreek_assets.graph.migrations import migrate_tenant
from datacreek_assets.graph_store import GraphAdmin
from datacreek_assets.hot_graph import HotGraphStore
from datacreek_assets.object_store import ObjectStore, TenantObjectStore
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.tenancy import validate_tenant_id
from datacreek_assets.tenant_registry import TenantRegistry

SCOPE_MARKER = "tenant.json"


class TenantHasData(RuntimeError):
    pass


class UnknownTenant(LookupError):
    pass


class TenantBusy(RuntimeError):
    """The tenant's runs were cancelled but did not all end in time: its data was left alone."""


# A cancelled run ends at its next Python instruction; a training step on a busy CPU takes longer.
RUN_STOP_TIMEOUT_S = 180.0


@dataclass
class TenantStores:
    registry: TenantRegistry
    graph: GraphAdmin
    hot_graph: HotGraphStore
    objects: ObjectStore
    features: Callable[[str], "object"] | None = None  # tenant id -> TenantFeatures
    finetune: "object | None" = None  # FineTuneResource: model files and MLflow
    ledger: "object | None" = None  # CreditLedger
    serving: "object | None" = None  # ServingControl: live deployments, API keys, release history
    curation: "object | None" = None  # CurationResource: review queue, curator keys, edge_repair_log


@dataclass
class LifecycleReport:
    tenant_id: str
    created: bool = False
    removed: bool = False
    steps: list[str] = field(default_factory=list)


def add_tenant(tenant_id: str, stores: TenantStores, instance: DagsterInstance) -> LifecycleReport:
    tenant_id = validate_tenant_id(tenant_id)
    report = LifecycleReport(tenant_id)
    stores.graph.create_scope(tenant_id)
    report.steps.append("neo4j scope")
    migrated = migrate_tenant(stores.graph, tenant_id)
    report.steps.append(f"graph migrations (at {migrated.version or 'no version'})")
    stores.hot_graph.create_scope(tenant_id)
    report.steps.append("falkordb graph")
    objects = TenantObjectStore(stores.objects, tenant_id)
    if not objects.exists(SCOPE_MARKER):
        objects.put(SCOPE_MARKER, json.dumps({"tenant_id": tenant_id, "created_at": datetime.now(timezone.utc).isoformat()}).encode())
    report.steps.append("object-store prefix")
    report.created = stores.registry.add(tenant_id)
    report.steps.append("registry")
    if not instance.has_dynamic_partition(TENANTS_PARTITION, tenant_id):
        instance.add_dynamic_partitions(TENANTS_PARTITION, [tenant_id])
    report.steps.append("dagster partition")
    return report


def tenant_data_summary(tenant_id: str, stores: TenantStores) -> dict[str, int]:
    """How much data a tenant holds in each store (scope markers excluded)."""
    objects = TenantObjectStore(stores.objects, tenant_id)
    object_count = sum(1 for area in TenantObjectStore.AREAS for key in objects.list(area=area) if key != SCOPE_MARKER)
    return {
        "neo4j_nodes": stores.graph.tenant(tenant_id).total_node_count(),  # soft-deleted included
        "falkordb_nodes": max(0, stores.hot_graph.node_count(tenant_id) - 1),  # minus the scope node
        "objects": object_count,
        "feature_vectors": stores.features(tenant_id).live_count() if stores.features else 0,
        "model_files": int(stores.finetune.tenant_dir(tenant_id).exists()) if stores.finetune else 0,
        "live_releases": len(stores.serving.store.live(tenant_id)) if stores.serving else 0,
    }


def stop_tenant_runs(tenant_id: str, instance: DagsterInstance, timeout_s: float = RUN_STOP_TIMEOUT_S,
                     poll_s: float = 0.5) -> list[str]:
    """Cancel the tenant's queued and running Dagster runs and wait until each has ended; their ids.
    A run still writing while its tenant's stores are deleted brings some of them back (seen in CI:
    a fine-tune started by automation made the MLflow experiment that the removal was deleting).
    Raises TenantBusy when a run is still going after ``timeout_s``."""
    import time

    from dagster import DagsterRunStatus, RunsFilter

    from datacreek_assets.run_coordinator import PARTITION_TAG
    from datacreek_assets.tenancy import TENANT_TAG

    in_flight = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                 DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]

    def running() -> dict:
        # the coordinator tags queued runs with the tenant; a run started in-process has only its partition
        return {run.run_id: run for tags in ({TENANT_TAG: tenant_id}, {PARTITION_TAG: tenant_id})
                for run in instance.get_runs(RunsFilter(tags=tags, statuses=in_flight))}

    runs, refused = running(), {}
    for run_id, run in runs.items():
        if run.status == DagsterRunStatus.CANCELING:
            continue
        try:
            instance.run_coordinator.cancel_run(run_id)
        except Exception as err:  # a launcher that cannot terminate (the in-memory one of tests)
            refused[run_id] = f"{err.__class__.__name__}: {err}"
    deadline = time.monotonic() + timeout_s
    while left := running():
        if time.monotonic() >= deadline:
            why = "; ".join(f"{run_id} could not be cancelled ({err})" for run_id, err in refused.items()
                            if run_id in left)
            raise TenantBusy(f"tenant {tenant_id!r}: run(s) {', '.join(sorted(left))} still going after "
                             f"{timeout_s:.0f} s{f' ({why})' if why else ''}; no data was deleted. Its partition "
                             "is gone, so no new run starts: remove it again once they end")
        time.sleep(poll_s)
    return sorted(runs)


def remove_tenant(tenant_id: str, stores: TenantStores, instance: DagsterInstance, force: bool = False,
                  run_stop_timeout_s: float = RUN_STOP_TIMEOUT_S) -> LifecycleReport:
    tenant_id = validate_tenant_id(tenant_id)
    report = LifecycleReport(tenant_id)
    known = stores.registry.get(tenant_id) is not None or instance.has_dynamic_partition(TENANTS_PARTITION, tenant_id)
    if not known:
        raise UnknownTenant(f"tenant {tenant_id!r} is not registered")
    summary = tenant_data_summary(tenant_id, stores)
    if any(summary.values()) and not force:
        held = ", ".join(f"{v} {k}" for k, v in summary.items() if v)
        raise TenantHasData(f"tenant {tenant_id!r} holds data ({held}); pass --force to delete it all")
    if instance.has_dynamic_partition(TENANTS_PARTITION, tenant_id):
        instance.delete_dynamic_partition(TENANTS_PARTITION, tenant_id)
    report.steps.append("dagster partition")  # first: no sensor or automation starts another run
    stopped = stop_tenant_runs(tenant_id, instance, timeout_s=run_stop_timeout_s)
    report.steps.append(f"runs ({len(stopped)} cancelled)")
    stores.graph.drop_scope(tenant_id)
    report.steps.append("neo4j scope")
    stores.hot_graph.drop_scope(tenant_id)
    report.steps.append("falkordb graph")
    TenantObjectStore(stores.objects, tenant_id).delete_all()
    report.steps.append("object-store prefix")
    if stores.features:
        from datacreek_assets.embeddings.feature_store import FEATURE_VIEWS

        for view in FEATURE_VIEWS:
            stores.features(tenant_id, view=view).drop_all()
        report.steps.append("feature store")
    if stores.serving:  # before the model files: a live deployment must stop serving them first
        stopped = stores.serving.remove_tenant(tenant_id)
        report.steps.append(f"serving ({len(stopped)} live version(s) ended, keys revoked)")
    if stores.finetune:  # a later tenant with the same id must not inherit models or runs
        import shutil

        from datacreek_assets.finetune.tracking import NoExperiment

        shutil.rmtree(stores.finetune.tenant_dir(tenant_id), ignore_errors=True)
        try:  # a tenant that never trained has no experiment: none is made just to delete it
            stores.finetune.mlflow.for_tenant(tenant_id, create=False).remove()
        except NoExperiment:
            pass
        report.steps.append("models and MLflow")
    if stores.curation:
        stores.curation.review_store().forget_tenant(tenant_id)
        stores.curation.repair_log().forget_tenant(tenant_id)
        report.steps.append("review queue, curator keys and repair log")
    if stores.ledger:
        stores.ledger.close_account(tenant_id)
        report.steps.append("credit account closed")
    stores.registry.remove(tenant_id)
    report.steps.append("registry")
    report.removed = True
    return report
