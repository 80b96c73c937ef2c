"""Adding and removing a tenant across every store.

Order matters: on add, every store's scope is created first and the Dagster
partition last, so a half-onboarded tenant never shows up as runnable; every
step is idempotent, so rerunning a failed add completes it. On remove, the
partition goes first (no new runs), then the tenant's runs are stopped, then
the data, then the registry row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from datacreek_assets.graph.migrations import migrate_tenant
from datacreek_assets.graph_store import GraphAdmin
from datacreek_assets.hot_graph import HotGraphStore
from datacreek_assets.object_store import ObjectStore, TenantObjectStore
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.run_coordinator import partition_of
from datacreek_assets.tenancy import TENANT_TAG, validate_tenant_id
from datacreek_assets.tenant_registry import TenantRegistry

SCOPE_MARKER = "tenant.json"


class TenantHasData(RuntimeError):
    pass


class UnknownTenant(LookupError):
    pass


class TenantBusy(RuntimeError):
    """The tenant's runs were cancelled but did not all end in time: its data was left alone."""


# A cancelled run is interrupted between Python instructions: what bounds its end is the longest
# call that does not return to Python (a training step's products or an export on a busy CPU).
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


def refuse_if_holding_data(tenant_id: str, stores: TenantStores) -> None:
    summary = tenant_data_summary(tenant_id, stores)
    if any(summary.values()):
        held = ", ".join(f"{v} {k}" for k, v in summary.items() if v)
        raise TenantHasData(f"tenant {tenant_id!r} holds data ({held}); pass --force to delete it all")


def tenant_runs_in_flight(tenant_id: str, instance: DagsterInstance) -> dict[str, DagsterRun]:
    """The tenant's unfinished runs: tagged with the tenant by the run coordinator, or (run
    in-process, never queued) carrying only its partition."""
    return {run.run_id: run for run in instance.get_runs(RunsFilter(statuses=list(NOT_FINISHED_STATUSES)))
            if run.tags.get(TENANT_TAG) == tenant_id or partition_of(run.tags) == tenant_id}


def cancel_run(instance: DagsterInstance, run: DagsterRun) -> str | None:
    """Ask the run to stop; None once asked, else why it could not be."""
    try:
        if instance.run_coordinator.cancel_run(run.run_id):
            return None
    except Exception as err:  # a launcher that cannot terminate (the in-memory one of tests)
        return f"{err.__class__.__name__}: {err}"
    now = instance.get_run_by_id(run.run_id)
    if now is not None and now.status == DagsterRunStatus.NOT_STARTED:
        # a record no launcher of this host holds: if a process picks it up, Dagster refuses to start it
        instance.report_run_canceled(now, message="Its tenant is being removed.")
        return None
    return "no run process of this host's launcher runs it"


def stop_tenant_runs(tenant_id: str, instance: DagsterInstance, timeout_s: float = RUN_STOP_TIMEOUT_S,
                     poll_s: float = 0.5, progress: Callable[[str], None] | None = None) -> list[str]:
    """Cancel the tenant's unfinished Dagster runs, those that appear meanwhile too, and wait until
    each has ended; the ids of the runs stopped. A run still writing while its tenant's stores are
    deleted brings some of them back (seen in CI: a fine-tune started by automation made the
    MLflow experiment that the removal was deleting). Raises TenantBusy when a run is still going
    after ``timeout_s``."""
    stopped: set[str] = set()
    refused: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while left := tenant_runs_in_flight(tenant_id, instance):
        for run_id, run in left.items():
            if run_id in stopped:
                continue
            stopped.add(run_id)
            if progress:
                progress(f"cancelling run {run_id} ({run.status.value}); waiting up to {timeout_s:.0f} s for it to end")
            if run.status != DagsterRunStatus.CANCELING and (why := cancel_run(instance, run)):
                refused[run_id] = why
        if time.monotonic() >= deadline:
            reasons = [f"{run_id}: {refused[run_id]}" for run_id in sorted(left) if run_id in refused]
            raise TenantBusy(
                f"tenant {tenant_id!r}: run(s) {', '.join(sorted(left))} still going after {timeout_s:.0f} s"
                + (f" ({'; '.join(reasons)})" if reasons else "")
                + ". No data was deleted; the tenant's partition is gone, so no new run starts. Remove it again "
                "once they end (a run whose process was killed can be ended in the Dagster UI: Terminate, "
                "then force termination), or `datacreek tenant add` it to keep it")
        time.sleep(poll_s)
    return sorted(stopped)


def remove_tenant(tenant_id: str, stores: TenantStores, instance: DagsterInstance, force: bool = False,
                  run_stop_timeout_s: float = RUN_STOP_TIMEOUT_S,
                  progress: Callable[[str], None] | None = None) -> LifecycleReport:
    tenant_id = validate_tenant_id(tenant_id)
    report = LifecycleReport(tenant_id)
    known = stores.registry.get(tenant_id) is not None or instance.has_dynamic_partition(TENANTS_PARTITION, tenant_id)
    if not known:
        raise UnknownTenant(f"tenant {tenant_id!r} is not registered")
    if not force:
        refuse_if_holding_data(tenant_id, stores)
    if instance.has_dynamic_partition(TENANTS_PARTITION, tenant_id):
        instance.delete_dynamic_partition(TENANTS_PARTITION, tenant_id)
    report.steps.append("dagster partition")  # first: no sensor or automation starts another run
    stopped = stop_tenant_runs(tenant_id, instance, timeout_s=run_stop_timeout_s, progress=progress)
    report.steps.append(f"runs ({len(stopped)} stopped)")
    if not force:  # a run stopped just now may have written some
        refuse_if_holding_data(tenant_id, stores)
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
