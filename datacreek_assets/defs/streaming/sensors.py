"""`hot_stream_sensor`: every minute it reads the stream job's health (Flink REST API) and each
tenant's lag and hot-graph status; it observes `hot_graph` for the tenants whose stream moved or
lags, and reports the `stream_keeps_up` check, which fails (an error in the UI) while the job is
down or a tenant is over 3 windows behind."""

import json

import dagster as dg

from datacreek_assets.defs.streaming.assets import stream_check_result
from datacreek_assets.partitions import TENANTS_PARTITION
from resources.stores import EventLogResource, HotGraphResource


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           asset_selection=dg.AssetSelection.assets("hot_graph"),
           description="Observes each tenant's hot graph (lag, last window, sizes, latency) and fails the "
           "stream_keeps_up check while the Flink job is down or a tenant lags over 3 windows.")
def hot_stream_sensor(context: dg.SensorEvaluationContext, hot_graph: HotGraphResource,
                      event_log: EventLogResource) -> dg.SensorResult:
    from datacreek_assets.streaming.monitor import stream_report

    tenants = list(context.instance.get_dynamic_partitions(TENANTS_PARTITION))
    report = stream_report(hot_graph.store(), event_log.bootstrap_servers, event_log.stream_rest_url, tenants)
    seen = json.loads(context.cursor) if context.cursor else {}
    events: list = []
    for stream in report.tenants:
        moved = seen.get(stream.tenant_id) != [stream.last_window, stream.events]  # or first seen
        if moved or stream.lagging:  # an idle, caught-up tenant is not observed again every minute
            events.append(dg.AssetObservation(asset_key="hot_graph", partition=stream.tenant_id,
                                              metadata=stream.as_metadata()))
        seen[stream.tenant_id] = [stream.last_window, stream.events]
    check = stream_check_result(report)
    if not report.healthy:
        context.log.error(f"hot graph stream: {report.summary()}")
    return dg.SensorResult(asset_events=[*events, dg.AssetCheckEvaluation(
        asset_key=check.asset_key, check_name=check.check_name, passed=check.passed, severity=check.severity,
        description=check.description, metadata=check.metadata)], cursor=json.dumps(seen, sort_keys=True))
