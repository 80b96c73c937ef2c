"""The demo's operational scenes, run against the persistent instance so the UI shows them.

- canary: the tenant's canary gets client traffic while the canary health sensor ticks; a
  healthy canary is promoted by the production_release run the sensor requests, a canary with
  injected latency (a drill) is rolled back by the sensor itself.

- drift: documents on a new subject arrive; the embeddings are refreshed; one tick of the
  drift sensor (the same code the daemon runs) requests the tenant's retraining, which runs
  with the sensor's tags (`datacreek/trigger=drift`); a passing model moves the reference.
- hot graph: documents arrive; knowledge_graph publishes their graph events and the Flink job
  folds them into the tenant's FalkorDB hot graph within about one 30 s window; the scene waits
  until a hot query sees them and reports the time it took.
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
        # an expected stop: the scene prints its outcome; the stack traces stay in the run's event log
        summary = materialize_tenant(defs, tenant, instance, selection=["finetuned_adapter"],
                                     on_progress=on_progress, launched_by="demo-quota", run_config=run_config,
                                     console_log_level="CRITICAL")
    finally:
        ledger.set_price(tenant, before.gpu_price, "gpu")
        ledger.set_price(tenant, before.cpu_price, "cpu")
        deficit = before.balance - ledger.account(tenant).balance
        if deficit > 0:
            ledger.top_up(tenant, deficit, note="demo: restore the balance after the quota scene")
    return summary, instance.get_run_by_id(summary.run_id).tags.get(STATUS_TAG)


@dataclass
class CanaryScene:
    version: str
    outcome: str  # promoted | rolled_back | undecided
    seconds: float  # from traffic start (promotion) or spike start (rollback) to the outcome
    reason: str
    status_counts: dict
    role_counts: dict
    promotion: RunSummary | None = None
    rollback_timings: dict | None = None


def canary_scene(defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict, tenant: str,
                 rate_per_s: float = 8.0, spike_s: float | None = None, timeout_s: float = 300.0,
                 tick_s: float = 1.0, on_progress: Callable | None = None) -> CanaryScene:
    """Drive the tenant's live canary with client traffic and run the canary health sensor (the
    code the daemon runs) every `tick_s`, acting on what it says as the daemon would: its
    rollback materializations are recorded, its production_release request is launched.
    With `spike_s`, the canary first gets that much latency injected (a canary drill)."""
    import time

    from datacreek_assets.defs.serving.sensors import canary_health_sensor
    from datacreek_assets.serving.traffic import TrafficGenerator

    serving = resources["serving"]
    control = serving.control()
    try:
        control.ensure_router()
        canary = control.store.live(tenant).get("canary")
        if canary is None:
            raise RuntimeError(f"tenant {tenant} has no live canary")
        key_id, key = control.store.issue_key(tenant)
        if spike_s:
            control.inject_delay(tenant, canary.version, spike_s)
        # closed-book traffic: a grounded request makes SmolLM2 read ~800 prompt tokens, 2-4 s on the
        # one thread a demo replica has, and the canary's verdict needs dozens of requests per side
        traffic = TrafficGenerator(control.url, key, rate_per_s, prefix=f"demo-{key_id}", retrieval=False).start()
        started = time.monotonic()
        outcome, reason, promotion, timings = "undecided", "no verdict before the timeout", None, None
        try:
            while time.monotonic() - started < timeout_s and outcome == "undecided":
                # (a context manager: the serving resource nests the object store's)
                with dg.build_sensor_context(instance=instance, resources={"serving": serving}) as context:
                    tick = canary_health_sensor(context)
                for event in tick.asset_events:
                    instance.report_runless_asset_event(event)
                    meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
                    outcome, reason = "rolled_back", meta["reason"]
                    timings = {k: meta[k] for k in ("traffic_off_s", "removed_s") if k in meta}
                for request in tick.run_requests:
                    promotion = materialize_tenant(defs, tenant, instance, selection=["production_release"],
                                                   on_progress=on_progress, launched_by="canary-sensor",
                                                   tags=dict(request.tags))
                    outcome = "promoted" if promotion.success else "promotion_failed"
                    reason = promotion.metadata.get("production_release", {}).get("reason", promotion.error or "")
                if outcome == "undecided":
                    time.sleep(tick_s)
            seconds = time.monotonic() - started
        finally:
            traffic.stop()
            control.store.revoke_key(tenant, key_id)
        return CanaryScene(canary.version, outcome, seconds, reason, dict(traffic.status),
                           {role: len(v) for role, v in traffic.latencies.items()}, promotion, timings)
    finally:
        control.close()


@dataclass
class HotScene:
    documents: int
    events: int
    seconds: float | None  # from the graph run's end (its events published) to all of them queryable
    latency_p95_s: float | None  # the job's own event-to-queryable measure, over the tenant's windows
    edges: list[dict]


def hot_scene(defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict, tenant: str,
              timeout_s: float = 150.0) -> HotScene:
    import time

    from datacreek_assets.demo_corpus import write_hot_corpus
    from datacreek_assets.streaming.hot_queries import HotQueries
    from datacreek_assets.streaming.monitor import latency_quantile

    hot = resources["hot_graph"].store()
    before = hot.status(tenant).get("events", 0)
    written = write_hot_corpus(resources["object_store"].for_tenant(tenant))
    run = materialize_tenant(defs, tenant, instance, selection=["raw_documents", "parsed_chunks", "knowledge_graph"],
                             launched_by="demo")
    if not run.success:
        raise RuntimeError(run.error)
    published_at = time.monotonic()
    events = int(run.metadata["knowledge_graph"].get("events_published", 0))
    deadline, seconds = published_at + timeout_s, None
    while time.monotonic() < deadline:
        if hot.status(tenant).get("events", 0) >= before + events:
            seconds = time.monotonic() - published_at
            break
        time.sleep(0.25)
    status = hot.status(tenant)
    return HotScene(len(written), events, seconds, latency_quantile(status.get("latency_counts", []), 0.95),
                    HotQueries(hot, tenant).recent_edges(windows=3, limit=5))


def answers_scene(resources: dict, tenant: str, questions: list[dict], progress=lambda done, total: None) -> dict:
    """The tenant's hand-written questions through the router, as a client asks them: its live
    production and canary versions with retrieval, and the canary closed-book too."""
    from datacreek_assets.serving.served_eval import score_served

    control = resources["serving"].control()
    try:
        control.ensure_router()
        live = control.store.live(tenant)
        with resources["graph_store"].tenant(tenant) as graph:
            own_docs = {c["doc_id"] for c in graph.live_chunks()}
        key_id, key = control.store.issue_key(tenant)
        try:
            runs = [(role, release.version, retrieval) for role, release in sorted(live.items())
                    for retrieval in ((True, False) if role == "canary" else (True,))]
            out, total, done = {}, len(runs) * len(questions), 0
            for role, version, retrieval in runs:
                out[(role, version, retrieval)] = score_served(
                    control.url, key, questions, retrieval, version, own_docs,
                    progress=lambda i, n, base=done: progress(base + i, total))
                done += len(questions)
            return out
        finally:
            control.store.revoke_key(tenant, key_id)
    finally:
        control.close()
