"""The curation sensor: new rows of `edge_repair_log` request each decided tenant's review queue
and dataset once, observed on its knowledge_graph; rows already handled request nothing, a tenant
whose rebuild is in flight waits without holding the others back, and a removed tenant is skipped."""

import json
from datetime import datetime, timezone

import dagster as dg

from datacreek_assets.curation.repair_log import RepairLog
from datacreek_assets.defs.curation import sensors
from datacreek_assets.partitions import TENANTS_PARTITION
from resources.stores import CurationResource


def log_decision(log: RepairLog, tenant: str, edge: str) -> None:
    with log.session() as session:
        log.add(session, tenant, edge, "ada", "accept", {}, {}, 0.1, 1, datetime.now(timezone.utc))
        session.commit()


def evaluate(instance, url: str, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"curation": CurationResource(url=url)})
    return sensors.curation_sensor(context)


def test_new_decisions_rebuild_each_decided_tenant_once(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'curation.db'}"
    log = RepairLog(url)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TENANTS_PARTITION, ["acme", "beta"])
        assert evaluate(instance, url, None).run_requests == []
        for tenant, edge in (("acme", "f1"), ("acme", "f2"), ("beta", "f9"), ("gone", "x1")):
            log_decision(log, tenant, edge)
        result = evaluate(instance, url, None)
        assert sorted(r.partition_key for r in result.run_requests) == ["acme", "beta"]  # "gone" was removed
        assert {r.tags["datacreek/trigger"] for r in result.run_requests} == {"curation"}
        assert json.loads(result.cursor)["after"] == 4
        observed = {e.partition: e.metadata["curator_decisions"].value for e in result.asset_events}
        assert observed == {"acme": 2, "beta": 1}
        assert evaluate(instance, url, result.cursor).run_requests == []

        # acme's rebuild is in flight: its new row waits, beta's goes ahead, and is not asked twice
        log_decision(log, "acme", "f3")
        log_decision(log, "beta", "f8")
        monkeypatch.setattr(sensors, "triggered_run_in_flight", lambda _instance, tenant, _trigger: tenant == "acme")
        waiting = evaluate(instance, url, result.cursor)
        assert [r.partition_key for r in waiting.run_requests] == ["beta"]
        assert [e.partition for e in waiting.asset_events] == ["beta"]
        monkeypatch.setattr(sensors, "triggered_run_in_flight", lambda *_: False)
        done = evaluate(instance, url, waiting.cursor)
        assert [r.partition_key for r in done.run_requests] == ["acme"] and [e.partition for e in done.asset_events] == ["acme"]
        assert json.loads(done.cursor) == {"after": 6, "seen": {}}
        assert evaluate(instance, url, done.cursor).run_requests == []
