"""The demo's two operational scenes, run against the persistent instance so the UI shows them.

- drift: documents on a new subject arrive; the embeddings are refreshed; one tick of the
  drift sensor (the same code the daemon runs) requests the tenant's retraining, which runs
  with the sensor's tags (`datacreek/trigger=drift`); a passing model moves the reference.
- quota: the tenant's price is raised past its balance and a fine-tune starts; its meter
  sees the balance go negative and the run ends tagged `datacreek/status=failed_quota`. The
  price is put back and the tenant topped up again, all as ledger transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import dagster as dg

from datacreek_assets.runner import RunSummary, materialize_tenant

# what upstream automation refreshes when documents arrive (the retraining then sees the new dataset)
REFRESH = ["raw_documents", "parsed_chunks", "knowledge_graph", "sft_dataset", "chunk_embeddings"]


@dataclass
class DriftScene:
    drift: float
    level: str
    requested: int
    retrain: RunSummary | None
    drift_after: float | None


def drift_scene(defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict, tenant: str,
                on_progress: Callable | None = None, run_config: dict | None = None) -> DriftScene:
    from datacreek_assets.defs.embeddings.assets import REFERENCE_KEY, read_vectors
    from datacreek_assets.defs.retraining.sensors import RETRAIN_ASSETS, embedding_drift_sensor
    from datacreek_assets.demo_corpus import write_drift_corpus
    from datacreek_assets.embeddings.drift import drift_score
    from datacreek_assets.embeddings.stats import from_npz

    store = resources["object_store"].for_tenant(tenant)
    cursor = str(instance.event_log_storage.get_maximum_record_id() or 0)
    write_drift_corpus(store)
    refresh = materialize_tenant(defs, tenant, instance, selection=REFRESH, on_progress=on_progress,
                                 launched_by="demo")
    if not refresh.success:
        raise RuntimeError(refresh.error)
    meta = refresh.metadata["chunk_embeddings"]
    tick = embedding_drift_sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    retrain = None
    for request in tick.run_requests:
        retrain = materialize_tenant(defs, tenant, instance, selection=RETRAIN_ASSETS, on_progress=on_progress,
                                     launched_by="drift-sensor", tags=dict(request.tags), run_config=run_config)
    _, matrix = read_vectors(store)
    after = drift_score(from_npz(store.get(REFERENCE_KEY)), matrix).drift if retrain and retrain.success else None
    return DriftScene(meta["drift"], meta["drift_level"], len(tick.run_requests), retrain, after)


def quota_scene(defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict, tenant: str,
                on_progress: Callable | None = None) -> tuple[RunSummary, str | None]:
    from datacreek_assets.billing.meter import STATUS_TAG

    ledger = resources["credit_ledger"].ledger()
    before = ledger.account(tenant)
    price = max(before.balance, 1.0) * 30  # credits a minute: the balance lasts about two seconds
    for resource in ("gpu", "cpu"):
        ledger.set_price(tenant, price, resource)
    # a new configuration (not a resume of the finished training), long enough to meet its meter's beat
    run_config = {"ops": {"finetuned_adapter": {"config": {"learning_rate": 2e-4, "epochs": 50}}}}
    try:
        summary = materialize_tenant(defs, tenant, instance, selection=["finetuned_adapter"],
                                     on_progress=on_progress, launched_by="demo-quota", run_config=run_config)
    finally:
        ledger.set_price(tenant, before.gpu_price, "gpu")
        ledger.set_price(tenant, before.cpu_price, "cpu")
        deficit = before.balance - ledger.account(tenant).balance
        if deficit > 0:
            ledger.top_up(tenant, deficit, note="demo: restore the balance after the quota scene")
    return summary, instance.get_run_by_id(summary.run_id).tags.get(STATUS_TAG)
