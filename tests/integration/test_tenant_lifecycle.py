"""Tenant add/remove across every real store: Neo4j, FalkorDB, object store (local and S3), registry, Dagster."""

import subprocess
import uuid

import dagster as dg
import pytest

from datacreek_assets.object_store import S3ObjectStore, TenantObjectStore
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.settings import ensure_dagster_home
from datacreek_assets.tenancy import TENANT_TAG, InvalidTenantId
from datacreek_assets.tenant_lifecycle import TenantBusy, TenantHasData, UnknownTenant, add_tenant, remove_tenant
from resources.factory import open_tenant_stores

pytestmark = pytest.mark.integration


@pytest.fixture
def stores(local_resources):
    with open_tenant_stores(local_resources) as opened:
        yield opened


def scope_state(stores, instance, tenant):
    return {
        "registry": stores.registry.get(tenant) is not None,
        "partition": instance.has_dynamic_partition(TENANTS_PARTITION, tenant),
        "neo4j": stores.graph.tenant(tenant).scope_exists(),
        "falkordb": stores.hot_graph.scope_exists(tenant),
        "objects": TenantObjectStore(stores.objects, tenant).exists("tenant.json"),
    }


def test_add_creates_every_scope_and_twice_is_harmless(stores, instance):
    first = add_tenant("life-a", stores, instance)
    second = add_tenant("life-a", stores, instance)
    assert first.created and not second.created
    assert scope_state(stores, instance, "life-a") == dict.fromkeys(
        ["registry", "partition", "neo4j", "falkordb", "objects"], True)
    assert instance.get_dynamic_partitions(TENANTS_PARTITION).count("life-a") == 1
    remove_tenant("life-a", stores, instance)
    assert not any(scope_state(stores, instance, "life-a").values())


def test_removing_a_tenant_with_data_needs_force_and_removes_everything(stores, instance):
    add_tenant("life-b", stores, instance)
    add_tenant("life-c", stores, instance)
    objects = TenantObjectStore(stores.objects, "life-b")
    objects.put("inbox/a.txt", b"The json module provides functions.")
    stores.hot_graph.graph("life-b").query("CREATE (:Chunk {x: 1})")
    stores.graph.tenant("life-b").replace_documents([{
        "doc_id": "a.txt", "props": {"signature": "s"}, "chunks": [], "next": [], "entities": [], "mentions": [], "facts": []}])
    with pytest.raises(TenantHasData, match="--force"):
        remove_tenant("life-b", stores, instance)
    assert all(scope_state(stores, instance, "life-b").values())  # refused: nothing touched
    remove_tenant("life-b", stores, instance, force=True)
    assert not any(scope_state(stores, instance, "life-b").values())
    assert objects.list() == [] and stores.graph.tenant("life-b").total_node_count() == 0
    assert all(scope_state(stores, instance, "life-c").values())  # the neighbour is untouched
    remove_tenant("life-c", stores, instance)
    with pytest.raises(UnknownTenant):
        remove_tenant("life-c", stores, instance)


@pytest.fixture
def queued_instance(tmp_path):
    """The project's own instance configuration (tenant-tagging queue, warm-process launcher) with no
    daemon: a submitted run stays queued."""
    with dg.DagsterInstance.from_config(str(ensure_dagster_home(tmp_path / "dagster_home"))) as inst:
        yield inst


def add_run(instance, tenant, status):
    """A run record as the queue holds one. No daemon runs here, so nothing dequeues or executes it:
    only its record, with the code-location origin a queued record must name (nothing serves it)."""
    from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    origin = RemoteJobOrigin(RemoteRepositoryOrigin(GrpcServerCodeLocationOrigin("localhost", 4266, location_name="datacreek"),
                                                    "__repository__"), "__ASSET_JOB")
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=status, remote_job_origin=origin,
                        tags={"dagster/partition": tenant, TENANT_TAG: tenant})
    instance.add_run(run)
    return run.run_id


def test_removing_a_tenant_cancels_its_queued_runs_first(stores, queued_instance):
    add_tenant("life-d", stores, queued_instance)
    add_tenant("life-e", stores, queued_instance)
    mine = add_run(queued_instance, "life-d", dg.DagsterRunStatus.QUEUED)
    never_started = add_run(queued_instance, "life-d", dg.DagsterRunStatus.NOT_STARTED)  # no launcher holds it
    neighbour = add_run(queued_instance, "life-e", dg.DagsterRunStatus.QUEUED)
    lines = []
    report = remove_tenant("life-d", stores, queued_instance, progress=lines.append)
    assert report.steps.index("runs (2 stopped)") < report.steps.index("neo4j scope")  # before any data goes
    assert len(lines) == 2 and {mine, never_started} == {line.split()[2] for line in lines}
    for run_id in (mine, never_started):
        assert queued_instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    assert queued_instance.get_run_by_id(neighbour).status == dg.DagsterRunStatus.QUEUED  # not its run
    assert not any(scope_state(stores, queued_instance, "life-d").values())
    remove_tenant("life-e", stores, queued_instance)


def test_a_run_that_does_not_stop_keeps_the_tenants_data_until_it_ends(stores, queued_instance):
    add_tenant("life-f", stores, queued_instance)
    objects = TenantObjectStore(stores.objects, "life-f")
    objects.put("inbox/a.txt", b"The json module provides functions.")
    # started elsewhere (no run process of this host's launcher to interrupt): it runs on
    stuck = add_run(queued_instance, "life-f", dg.DagsterRunStatus.STARTED)
    with pytest.raises(TenantBusy, match=f"{stuck}: no run process of this host's launcher runs it"):
        remove_tenant("life-f", stores, queued_instance, force=True, run_stop_timeout_s=1)
    assert objects.get("inbox/a.txt") == b"The json module provides functions."
    assert stores.registry.get("life-f") is not None and stores.graph.tenant("life-f").scope_exists()
    queued_instance.report_run_failed(queued_instance.get_run_by_id(stuck))  # it ends
    remove_tenant("life-f", stores, queued_instance, force=True)  # the same command again finishes
    assert not any(scope_state(stores, queued_instance, "life-f").values())


@pytest.mark.parametrize("bad", ["../x", "A", "a_b", "-a", "a;b", "ünicode", "a" * 41, ""])
def test_hostile_ids_never_reach_a_store(stores, instance, bad):
    before = (stores.hot_graph.tenants(), [t.tenant_id for t in stores.registry.list()])
    with pytest.raises(InvalidTenantId):
        add_tenant(bad, stores, instance)
    assert (stores.hot_graph.tenants(), [t.tenant_id for t in stores.registry.list()]) == before
    assert instance.get_dynamic_partitions(TENANTS_PARTITION) == []


def test_s3_object_store_scope_against_moto_server(s3_resource, s3_bucket):
    store = S3ObjectStore(s3_bucket, s3_resource.get_client())
    a, b = TenantObjectStore(store, "acme"), TenantObjectStore(store, "acme-2")
    a.put("inbox/x.txt", b"A")
    b.put("inbox/x.txt", b"B")
    a.put("d/c.json", b"{}", area="toxic")
    assert a.list("inbox") == ["inbox/x.txt"] and a.get("inbox/x.txt") == b"A"
    assert b.list() == ["inbox/x.txt"]  # 'acme' is a prefix of 'acme-2' but not of its scope
    assert a.exists("inbox/x.txt") and not a.exists("inbox/y.txt")
    with pytest.raises(FileNotFoundError):
        a.get("inbox/y.txt")
    assert a.delete_all() == 2 and a.list() == [] and b.get("inbox/x.txt") == b"B"


def test_cli_tenant_lifecycle(cli_env, datacreek):
    def run(*args):
        return subprocess.run([datacreek, "tenant", *args], env=cli_env, capture_output=True, text=True)

    assert run("add", "cli-tenant").returncode == 0
    again = run("add", "cli-tenant")
    assert again.returncode == 0 and "already present" in again.stdout
    assert "cli-tenant" in run("list").stdout
    assert run("remove", "cli-tenant").returncode == 0
    assert "cli-tenant" not in run("list").stdout
    missing = run("remove", "cli-tenant")
    assert missing.returncode == 2 and "not registered" in missing.stderr
