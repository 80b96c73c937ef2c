"""The whole asset graph for a small tenant, the way the demo runs it, against real services.

Keep this test: it is what stops the main job from silently breaking as assets are added.
"""

import dagster as dg
import pytest

from datacreek_assets.defs import build_definitions
from datacreek_assets.demo_corpus import write_demo_corpus
from datacreek_assets.object_store import TenantObjectStore
from datacreek_assets.runner import TENANT_TAG, materialize_tenant
from datacreek_assets.tenant_lifecycle import add_tenant, remove_tenant
from resources.factory import open_tenant_stores

pytestmark = pytest.mark.e2e

TENANT = "e2e-small"


@pytest.fixture
def tenant(local_resources, instance):
    with open_tenant_stores(local_resources) as stores:
        add_tenant(TENANT, stores, instance)
        yield stores
        remove_tenant(TENANT, stores, instance, force=True)


def test_every_asset_materializes_for_a_small_tenant(services, local_resources, instance, tenant):
    objects = TenantObjectStore(tenant.objects, TENANT)
    written = write_demo_corpus(objects, max_docs=6)
    objects.put("inbox/hostile.html", b"<script>" + b"\xff" * 10)
    defs = build_definitions("local", services)
    all_keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}

    progress = []
    first = materialize_tenant(defs, TENANT, instance, on_progress=lambda k, d, t: progress.append((k, d, t)))
    assert first.success, first.error
    assert set(first.materialized) == all_keys
    assert [d for _, d, _ in progress] == list(range(1, len(all_keys) + 1))
    run = instance.get_run_by_id(first.run_id)
    assert run.tags[TENANT_TAG] == TENANT

    raw = first.metadata["raw_documents"]
    assert raw["documents"] == len(written) - 2 and raw["quarantined"] == 3  # two demo junk files + hostile.html
    graph_meta = first.metadata["knowledge_graph"]
    assert graph_meta["documents_written"] == raw["documents"]
    assert graph_meta["nodes"]["Chunk"] == first.metadata["parsed_chunks"]["chunks"]
    assert graph_meta["nodes"]["Fact"] > 0 and graph_meta["relationships"]["MENTIONS"] > 0
    assert graph_meta["extraction_precision_sample"]["fact_precision_lenient"] > 0.5
    assert "data:image/png;base64," in graph_meta["graph_picture"]
    assert objects.get("reports/knowledge_graph.png").startswith(b"\x89PNG")

    second = materialize_tenant(defs, TENANT, instance)
    assert second.success
    assert second.metadata["knowledge_graph"]["documents_unchanged"] == raw["documents"]
    assert second.metadata["knowledge_graph"]["writes"] == {} or not any(
        second.metadata["knowledge_graph"]["writes"].values())

    partitions = instance.get_materialized_partitions(dg.AssetKey("knowledge_graph"))
    assert partitions == {TENANT}
