"""The prod Dagster instance (k8s/dagster-instance.yaml) on a real PostgreSQL: runs, the event
log, dynamic partitions, concurrency slots and schedule storage all live in Postgres and are read
back by another instance, as the webserver and daemon read what a run pod wrote."""

import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest

from datacreek_assets.automation import set_gpu_slots
from datacreek_assets.defs.ingest.assets import raw_documents
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.run_coordinator import TenantTaggingRunCoordinator
from datacreek_assets.runner import tenant_tags
from resources.stores import ObjectStoreResource, TenantRegistryResource

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def prod_home(postgres, tmp_path, monkeypatch) -> Path:
    url = postgres.create_database(f"dagster_{uuid.uuid4().hex[:10]}")
    # dagster-postgres's SQL (NOTIFY with a bound parameter) is psycopg2's; SQLAlchemy 2.1 reads a
    # bare postgresql:// as psycopg 3, so the URL names the driver
    monkeypatch.setenv("DATACREEK_DAGSTER_POSTGRES_URL", url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "k8s" / "dagster-instance.yaml", home / "dagster.yaml")
    return home


def test_the_prod_instance_keeps_runs_events_partitions_and_slots_in_postgres(prod_home, tmp_path):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    objects = ObjectStoreResource(backend="local", root=str(tmp_path / "objects"))
    registry = TenantRegistryResource(url=f"sqlite:///{tmp_path / 'registry.db'}")
    registry.registry().add("pg-tenant")
    objects.for_tenant("pg-tenant").put("inbox/a.md", b"# Rivers\n\nThe Danube flows through Vienna.")
    with dg.DagsterInstance.from_config(str(prod_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, TenantTaggingRunCoordinator)
        instance.add_dynamic_partitions(TENANTS_PARTITION, ["pg-tenant"])
        set_gpu_slots(instance, 2)
        result = dg.materialize([raw_documents], partition_key="pg-tenant", instance=instance,
                                resources={"object_store": objects, "tenant_registry": registry},
                                tags=tenant_tags("pg-tenant", "test"))
        assert result.success
        run_id = result.run_id

    # a second instance on the same database, as the webserver or the daemon would open it
    with dg.DagsterInstance.from_config(str(prod_home)) as other:
        run = other.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["datacreek/tenant"] == "pg-tenant"
        event = other.get_latest_materialization_event(dg.AssetKey("raw_documents"))
        assert event.run_id == run_id and event.asset_materialization.partition == "pg-tenant"
        assert event.asset_materialization.metadata["documents"].value == 1
        assert other.get_dynamic_partitions(TENANTS_PARTITION) == ["pg-tenant"]
        assert other.event_log_storage.get_concurrency_info("gpu").slot_count == 2
        assert other.schedule_storage.all_instigator_state() == []  # the tables are there and answer
        other.delete_run(run_id)
        assert other.get_run_by_id(run_id) is None
