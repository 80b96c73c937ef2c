"""The whole asset graph for a small tenant, the way the demo runs it, against real services.

Keep this test: it is what stops the main job from silently breaking as assets are added.
"""

import dagster as dg
import pytest

from datacreek_assets.defs import build_definitions
from datacreek_assets.defs.embeddings.assets import read_vectors
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
        features = local_resources["feature_store"].for_tenant(TENANT)
        assert features.live_count() == 0 and features.stored_rows().empty


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

    # dataset, embeddings and features
    sft = first.metadata["sft_dataset"]
    assert sft["records"] > 20 and sft["new_version"] and len(sft["template_sha"]) == 64
    assert sum(sft["splits"].values()) == sft["records"]
    assert objects.get(f"datasets/sft/{sft['version']}/chat.jsonl").count(b"\n") == sft["records"]
    assert second.metadata["sft_dataset"]["version"] == sft["version"]
    assert not second.metadata["sft_dataset"]["new_version"]
    emb = first.metadata["chunk_embeddings"]
    assert emb["vectors"] == first.metadata["parsed_chunks"]["chunks"] and emb["computed"] == emb["vectors"]
    assert emb["recall_at_10_fp8_vs_fp32"] >= 0.95
    assert second.metadata["chunk_embeddings"]["computed"] == 0
    feats = first.metadata["embedding_features"]
    assert feats["rows_written"] == emb["vectors"] and feats["online_probe_found"] == "8/8"
    assert second.metadata["embedding_features"]["rows_written"] == 0

    # topology: diagrams, signatures in the feature store, a lens with its T, a Mapper graph with its check
    sketches = first.metadata["persistence_sketches"]
    assert sketches["points"] == emb["vectors"] and sketches["signature_rows_written"] == emb["vectors"]
    assert sketches["diagram_points"]["H0"] == emb["vectors"]
    assert "data:image/png;base64," in sketches["persistence_diagram"]
    topo = local_resources["feature_store"].for_tenant(TENANT, view="chunk_topology")
    probe = topo.online_rows(list(read_vectors(objects)[0]["embedding_hash"][:3]), ["doc_signature"])
    assert all(row is not None and len(row["doc_signature"]) == 64 for row in probe)
    lens = first.metadata["umap_lens"]
    assert set(lens["candidates"]) >= {"pca", "umap(n_neighbors=15, min_dist=0.1)"}
    assert all(0 <= c["T"] <= 1 for c in lens["candidates"].values())
    assert "data:image/png;base64," in lens["lens"]
    mapper = first.metadata["mapper_graph"]
    assert mapper["clusters"] > 0 and len(mapper["bootstrap_cluster_counts"]) == 20
    evaluations = instance.get_records_for_run(first.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    [check] = [r.event_log_entry.dagster_event.event_specific_data for r in evaluations]
    assert check.check_name == "mapper_stability" and check.passed == (mapper["cluster_count_cv"] <= 0.05)

    # a document leaves the inbox: its graph data, vectors and dataset records go with it
    frame, _ = read_vectors(objects)
    gone_doc = sorted(set(frame["doc_id"]))[0]
    gone_hashes = list(frame.loc[frame["doc_id"] == gone_doc, "embedding_hash"])
    objects.delete(f"inbox/{gone_doc}")
    third = materialize_tenant(defs, TENANT, instance)
    assert third.success, third.error
    assert third.metadata["knowledge_graph"]["documents_soft_deleted"] == 1
    assert third.metadata["embedding_features"]["marked_deleted"] == len(gone_hashes)
    assert third.metadata["sft_dataset"]["version"] != sft["version"]
    features = local_resources["feature_store"].for_tenant(TENANT)
    assert set(features.lookup(gone_hashes).values()) == {None}
    others = list(frame.loc[frame["doc_id"] != gone_doc, "embedding_hash"][:3])
    assert all(v is not None for v in features.lookup(others).values())
