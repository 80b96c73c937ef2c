"""Every queued run gets datacreek/tenant, however it was launched, and the
per-tenant concurrency limit applies to it."""

import dagster as dg
import pytest
from dagster._core.run_coordinator import SubmitRunContext

from datacreek_assets.run_coordinator import TENANT_TAG, TenantTaggingRunCoordinator
from datacreek_assets.settings import ensure_dagster_home


@pytest.fixture
def instance(tmp_path):
    ensure_dagster_home(tmp_path)  # the local dagster.yaml, with the tagging coordinator
    with dg.DagsterInstance.from_config(str(tmp_path)) as inst:
        yield inst


def submit(instance, tags):
    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.test_utils import create_run_for_test

    location = InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__), location_name="test")
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "__ASSET_JOB")
    run = create_run_for_test(instance, job_name="__ASSET_JOB", tags=tags, remote_job_origin=origin)
    return instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))


def test_local_instance_uses_the_tagging_coordinator(instance):
    assert isinstance(instance.run_coordinator, TenantTaggingRunCoordinator)


@pytest.mark.parametrize("launched_by", ["dagster/backfill", "dagster/sensor_name", "dagster/schedule_name"])
def test_partitioned_runs_are_tagged_with_their_tenant(instance, launched_by):
    run = submit(instance, {"dagster/partition": "acme", launched_by: "x"})
    assert run.tags[TENANT_TAG] == "acme" and run.status == dg.DagsterRunStatus.QUEUED


def test_runs_over_a_one_tenant_partition_range_are_tagged_too(instance):
    """Backfills with a backfill policy, and automation, tag runs with a range, not dagster/partition."""
    one = {"dagster/asset_partition_range_start": "acme", "dagster/asset_partition_range_end": "acme"}
    assert submit(instance, one).tags[TENANT_TAG] == "acme"
    many = {"dagster/asset_partition_range_start": "acme", "dagster/asset_partition_range_end": "globex"}
    assert TENANT_TAG not in submit(instance, many).tags


def test_existing_tags_and_non_tenant_partitions_are_left_alone(instance):
    assert submit(instance, {"dagster/partition": "acme", TENANT_TAG: "acme"}).tags[TENANT_TAG] == "acme"
    assert TENANT_TAG not in submit(instance, {"dagster/partition": "Not A Tenant"}).tags
    assert TENANT_TAG not in submit(instance, {}).tags


def test_per_tenant_limit_is_configured(instance):
    limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
    assert {"key": TENANT_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


@pytest.mark.parametrize("tags", [
    {"dagster/partition": "acme", TENANT_TAG: "globex"},
    {"dagster/asset_partition_range_start": "acme", "dagster/asset_partition_range_end": "acme", TENANT_TAG: "globex"},
    {"dagster/asset_partition_range_start": "acme", "dagster/asset_partition_range_end": "globex", TENANT_TAG: "globex"},
])
def test_a_tenant_tag_that_disagrees_with_the_partition_is_refused(instance, tags):
    """The launcher picks the namespace from the tag: a run of acme tagged globex would run on
    globex's quota and volumes while writing acme's data. It fails before it is queued."""
    from datacreek_assets.k8s_launcher import tenant_container_context
    from datacreek_assets.run_coordinator import TenantTagMismatch

    run = submit(instance, tags)
    assert run.status == dg.DagsterRunStatus.FAILURE and run.tags[TENANT_TAG] == "globex"
    failure = [e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_run_failure]
    assert failure and ("partition decides" in failure[0].message or "one tenant" in failure[0].message)
    with pytest.raises(TenantTagMismatch):  # and the launcher never places it in globex's namespace
        tenant_container_context(run)
    assert tenant_container_context(submit(instance, {"dagster/partition": "acme"})).namespace == "tenant-acme"
