"""The hot graph is kept by a long-running stream job, not by runs: an external asset per tenant,
observed by `hot_stream_sensor` (lag, last window written, sizes, event-to-queryable latency), with
a check that fails while the job is down or a tenant lags."""

import dagster as dg

from datacreek_assets.partitions import tenant_partitions
from resources.stores import EventLogResource, HotGraphResource

hot_graph = dg.AssetSpec(
    "hot_graph", group_name="streaming", partitions_def=tenant_partitions, deps=["knowledge_graph"],
    kinds={"flink", "kafka", "falkordb"},
    description="Each tenant's FalkorDB hot graph: chunks, entities, fact hyperedges and co-occurrence edges "
    "weighted by the live chunks naming both, written every 30 s event-time window by the Flink job from "
    "the graph events knowledge_graph publishes. Rebuilt from Neo4j with `datacreek events replay`.")


def stream_check_result(report) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key="hot_graph", check_name="stream_keeps_up", passed=report.healthy,
        severity=dg.AssetCheckSeverity.ERROR, description=report.summary(),
        metadata={"job_state": report.job_state or "not answering", "lagging_tenants": len(report.lagging),
                  "tenants": len(report.tenants),
                  "max_lag_s": max((t.lag_s for t in report.tenants), default=0.0)})


@dg.asset_check(asset="hot_graph", description="Fails while the stream job is not RUNNING or a tenant is over "
                "3 windows (90 s) behind; the sensor reports it every minute.")
def stream_keeps_up(context: dg.AssetCheckExecutionContext, hot_graph: HotGraphResource,
                    event_log: EventLogResource) -> dg.AssetCheckResult:
    from datacreek_assets.streaming.monitor import stream_report

    tenants = list(context.instance.get_dynamic_partitions("tenants"))
    report = stream_report(hot_graph.store(), event_log.bootstrap_servers, event_log.stream_rest_url, tenants)
    return stream_check_result(report)
