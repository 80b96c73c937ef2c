"""Declarative automation on the real asset graph: a tenant's upstream change requests only
that tenant's downstream partitions; (re)activation requests nothing; GPU steps have a pool."""

import json

import dagster as dg
import pytest

from datacreek_assets.automation import AUTOMATION_TAGS, GPU_POOL, set_gpu_slots
from datacreek_assets.defs import build_definitions
from datacreek_assets.settings import LocalSettings


@pytest.fixture
def defs(tmp_path):
    return build_definitions("local", LocalSettings(state_dir=tmp_path))


def requested(result, defs):
    """(asset, partition) pairs an automation evaluation requested."""
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    return {(k.to_user_string(), p) for k in keys for p in result.get_requested_partitions(k)}


def test_only_the_changed_tenant_is_brought_up_to_date(defs):
    with dg.instance_for_test() as instance:
        tenants = [f"tenant-{i}" for i in range(6)]
        instance.add_dynamic_partitions("tenants", tenants)
        for tenant in tenants:  # history: every tenant was ingested once
            instance.report_runless_asset_event(dg.AssetMaterialization("raw_documents", partition=tenant))
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0  # activating automation does not flood
        instance.report_runless_asset_event(dg.AssetMaterialization("raw_documents", partition="tenant-3"))
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        pairs = requested(second, defs)
        assert pairs and {p for _, p in pairs} == {"tenant-3"}
        assert ("parsed_chunks", "tenant-3") in pairs
        third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
        assert third.total_requested == 0  # requested once, not on every tick


def test_gpu_steps_share_a_pool_and_automation_runs_are_tagged(defs, tmp_path):
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("finetuned_adapter")).pools == {GPU_POOL}
    sensor = defs.resolve_sensor_def("datacreek_automation")
    assert sensor.run_tags == AUTOMATION_TAGS
    with dg.instance_for_test() as instance:
        set_gpu_slots(instance, 1)
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1


def test_only_steps_that_bill_a_gpu_ask_for_one(defs):
    """A pod that holds a GPU its step does not meter is GPU time nobody pays for: the embedder
    runs on CPU, so chunk_embeddings asks for no GPU; the fine-tuning step asks and bills."""
    graph = defs.resolve_asset_graph()
    asking = set()
    for key in graph.executable_asset_keys:  # not the external hot_graph: no step runs for it
        node = graph.get(key)
        config = json.loads(defs.resolve_assets_def(key).op.tags.get("dagster-k8s/config", "{}"))
        resources = config.get("container_config", {}).get("resources", {})
        if any("nvidia.com/gpu" in resources.get(part, {}) for part in ("requests", "limits")):
            asking.add(key.to_user_string())
            assert node.pools == {GPU_POOL}, key
    assert asking == {"finetuned_adapter"}
