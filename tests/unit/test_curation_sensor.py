"""The curation sensor: new rows of `edge_repair_log` request each decided tenant's review queue
and dataset once, observed on its knowledge_graph; rows already seen request nothing."""

from datetime import datetime, timezone

import dagster as dg

from datacreek_assets.curation.repair_log import RepairLog
from datacreek_assets.defs.curation.sensors import curation_sensor
from resources.stores import CurationResource


def log_decision(log: RepairLog, tenant: str, edge: str) -> None:
    with log.session() as session:
        log.add(session, tenant, edge, "ada", "accept", {}, {}, 0.1, 1, datetime.now(timezone.utc))
        session.commit()


def evaluate(instance, url: str, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"curation": CurationResource(url=url)})
    return curation_sensor(context)


def test_new_decisions_rebuild_each_decided_tenant_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'curation.db'}"
    log = RepairLog(url)
    with dg.DagsterInstance.ephemeral() as instance:
        assert evaluate(instance, url, None).run_requests == []
        for tenant, edge in (("acme", "f1"), ("acme", "f2"), ("beta", "f9")):
            log_decision(log, tenant, edge)
        result = evaluate(instance, url, None)
        assert sorted(r.partition_key for r in result.run_requests) == ["acme", "beta"]
        assert {r.tags["datacreek/trigger"] for r in result.run_requests} == {"curation"}
        assert result.cursor == "3"
        observed = {e.partition: e.metadata["curator_decisions"].value for e in result.asset_events}
        assert observed == {"acme": 2, "beta": 1}
        assert evaluate(instance, url, result.cursor).run_requests == []
        log_decision(log, "beta", "f9")
        again = evaluate(instance, url, result.cursor)
        assert [r.partition_key for r in again.run_requests] == ["beta"] and again.cursor == "4"
