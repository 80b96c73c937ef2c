"""The partition-sync sensor: run requests of partitions and a watermark cursor."""

import dagster as dg
import pytest

from datacreek_assets.defs.tenants.sensors import tenant_partitions_sync
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.tenant_registry import TenantChangeRow, TenantRegistry
from resources.stores import TenantRegistryResource


@pytest.fixture
def registry(sql_url):
    url = sql_url  # the tenant registry on SQLite and on PostgreSQL
    reg = TenantRegistry(url)
    yield reg, TenantRegistryResource(url=url)
    reg.close()


def tick(instance, resource, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"tenant_registry": resource})
    result = tenant_partitions_sync(context)
    for request in result.dynamic_partitions_requests or []:  # what the daemon would apply
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def requested(result):
    out = {"add": [], "delete": []}
    for request in result.dynamic_partitions_requests or []:
        kind = "add" if isinstance(request, dg.AddDynamicPartitionsRequest) else "delete"
        out[kind] += list(request.partition_keys)
    return out


def test_adds_then_removes_partitions_and_advances_the_watermark(registry, instance):
    reg, resource = registry
    reg.add("acme")
    reg.add_many(["globex", "initech"])
    first = tick(instance, resource, None)
    assert requested(first) == {"add": ["acme", "globex", "initech"], "delete": []}
    assert first.cursor == "3"  # three changes applied
    assert sorted(instance.get_dynamic_partitions(TENANTS_PARTITION)) == ["acme", "globex", "initech"]

    quiet = tick(instance, resource, first.cursor)
    assert requested(quiet) == {"add": [], "delete": []} and quiet.cursor == "3"

    reg.remove("globex")
    reg.add("umbrella")
    second = tick(instance, resource, quiet.cursor)
    assert requested(second) == {"add": ["umbrella"], "delete": ["globex"]}
    assert second.cursor == "5"
    assert sorted(instance.get_dynamic_partitions(TENANTS_PARTITION)) == ["acme", "initech", "umbrella"]


def test_net_effect_within_one_tick_and_bounded_pages(registry, instance):
    reg, resource = registry
    reg.add("flip")
    reg.remove("flip")  # added and removed before the sensor saw it: no partition at all
    reg.add_many([f"t{i:04d}" for i in range(1200)])
    first = tick(instance, resource, None)
    assert "flip" not in requested(first)["add"] and requested(first)["delete"] == []
    assert first.cursor == "1000" and len(requested(first)["add"]) == 998  # one page of 1,000 changes
    second = tick(instance, resource, first.cursor)
    assert len(requested(second)["add"]) == 202 and second.cursor == "1202"
    assert len(instance.get_dynamic_partitions(TENANTS_PARTITION)) == 1200


def test_a_hostile_row_never_becomes_a_partition(registry, instance):
    reg, resource = registry
    from datetime import datetime, timezone

    from sqlalchemy.orm import Session

    with Session(reg.engine) as session:  # a row written around the validated API
        session.add(TenantChangeRow(tenant_id="../evil", change="added", at=datetime.now(timezone.utc)))
        session.commit()
    reg.add("good")
    result = tick(instance, resource, None)
    assert requested(result)["add"] == ["good"] and result.cursor == "2"
