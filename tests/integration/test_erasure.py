"""Erasure of one document through the real pipeline and stores: ingest (local object store),
the Neo4j graph, MiniLM embeddings in Feast (SQLite online, parquet offline). A document carries a
marker string; its neighbour tenant holds the same marker and must keep it."""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from datacreek_assets.defs.embeddings.assets import chunk_embeddings, embedding_features, read_vectors
from datacreek_assets.defs.datasets.assets import sft_dataset
from datacreek_assets.defs.graph.assets import knowledge_graph
from datacreek_assets.defs.graph.schedules import purge_tenant
from datacreek_assets.defs.ingest.assets import parsed_chunks, raw_documents
from datacreek_assets.defs.retrieval.assets import retrieval_dir, retrieval_index
from datacreek_assets.erasure.documents import (
    document_hash,
    hide_vectors,
    log_erasure,
    purged_trainings,
    read_erasure_log,
)
from datacreek_assets.graph.sync import OPERATOR
from datacreek_assets.partitions import TENANTS_PARTITION

pytestmark = pytest.mark.integration
MARKER = "zqxmarker7731"


def corpus() -> dict[str, str]:
    """Two documents of the demo corpus; the first carries the marker in every sentence (so every
    chunk, and every SFT record quoting one, holds it) and ends with an e-mail address (so a chunk
    is screened out to ingest-toxic/)."""
    from datacreek_assets.demo_corpus import MODULES, module_text

    (title, body), (other_title, other_body) = module_text(MODULES[0]), module_text(MODULES[1])
    marked = body.replace(". ", f". The {MARKER} note. ")
    return {"marker.md": f"# The {title} module\n\n{marked}\n\nWrite to {MARKER}.owner@example.com for access.\n",
            "other.md": f"# The {other_title} module\n\n{other_body}\n"}


def everything_stored(objects, graph, views, models) -> str:
    """Every byte the tenant's stores hold, as text: object-store objects (all areas, every copy),
    the graph's nodes and edges, the feature store's offline rows, every file of its models folder."""
    texts = [objects.get(key, area).decode("utf-8", "replace")
             for area in ("tenant", "toxic") for key in objects.list(area=area)]
    texts += [model_file_text(path) for path in models.rglob("*") if path.is_file()]
    texts += graph.fingerprint()
    texts += [view.stored_rows().to_csv() for view in views]
    return "\n".join(texts)


def model_file_text(path) -> str:
    """A file's text; numpy archives store strings as UTF-32, so their arrays are read and joined."""
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as archive:
            return "\n".join(str(archive[name].tolist()) for name in archive.files)
    return path.read_bytes().decode("utf-8", "replace")


@pytest.fixture
def tenants(local_resources, instance):
    registry = local_resources["tenant_registry"].registry()
    names = ["erase-a", "erase-b"]
    for name in names:
        registry.add(name)
        with local_resources["graph_store"].admin() as admin:
            admin.tenant(name).delete_everything()
            admin.create_scope(name)
        local_resources["object_store"].for_tenant(name).delete_all()
        for view in ("chunk_embeddings", "chunk_topology"):
            local_resources["feature_store"].for_tenant(name, view=view).drop_all()
    instance.add_dynamic_partitions(TENANTS_PARTITION, names)
    yield names
    for name in names:
        registry.remove(name)
    registry.close()


def test_a_deleted_documents_copies_go_at_purge_and_its_vectors_at_once(local_resources, instance, tenants):
    assets = [raw_documents, parsed_chunks, knowledge_graph, chunk_embeddings, embedding_features, retrieval_index,
              sft_dataset]
    for tenant in tenants:
        objects = local_resources["object_store"].for_tenant(tenant)
        for name, text in corpus().items():
            objects.put(f"inbox/{name}", text.encode())
        result = dg.materialize(assets, partition_key=tenant, instance=instance, resources=local_resources)
        assert result.success
    objects = local_resources["object_store"].for_tenant("erase-a")
    views = [local_resources["feature_store"].for_tenant("erase-a", view=v) for v in ("chunk_embeddings", "chunk_topology")]
    frame, _ = read_vectors(objects)
    hashes = list(frame.loc[frame["doc_id"] == "marker.md", "embedding_hash"])
    others = list(frame.loc[frame["doc_id"] != "marker.md", "embedding_hash"])
    assert hashes and others and objects.list(area="toxic")  # the e-mail address sent a chunk to ingest-toxic/
    with local_resources["graph_store"].tenant("erase-a") as graph:
        folder = retrieval_dir(local_resources["finetune"], "erase-a")
        models = local_resources["finetune"].tenant_dir("erase-a")
        assert MARKER in everything_stored(objects, graph, views, models)
        assert MARKER in "".join(model_file_text(p) for p in folder.glob("*.npz"))  # the scan reads archives
        version = objects.get_json("datasets/sft/latest.json")["version"]
        quoting = objects.get_json(f"datasets/sft/{version}/documents.json")["marker.md"]
        assert quoting and MARKER in objects.get(f"datasets/sft/{version}/chat.jsonl").decode()

        # delete: the graph hides it, and its vectors are gone from lookups at once
        assert graph.soft_delete_documents(["marker.md"], by=OPERATOR) == 1
        hidden = hide_vectors(views, "marker.md")
        log_erasure(objects, "delete", "marker.md", {"vectors_hidden": hidden})
        assert hidden == len(hashes)
        assert set(views[0].lookup(hashes).values()) == {None}
        assert all(v is not None for v in views[0].lookup(others).values())

        # purge (31 days on): every copy in the object store, the graph and the feature store goes
        # a training on that dataset version (its lineage names it): tainted, recorded for model_gc
        (models / "runs" / "k-on-marker").mkdir(parents=True)
        (models / "runs" / "k-on-marker" / "lineage.json").write_text(json.dumps({"dataset_version": version}))
        purged, erased, tainted = purge_tenant(graph, objects, views, models,
                                               now=datetime.now(timezone.utc) + timedelta(days=31))
        assert erased == 1 and purged > 0 and tainted == ["k-on-marker"]
        assert purged_trainings(models) == {"k-on-marker"}
        stored = everything_stored(objects, graph, views, models)
        assert MARKER not in stored
        assert corpus()["other.md"][40:120] in stored  # the other document is untouched
        chat = objects.get_jsonl(f"datasets/sft/{version}/chat.jsonl")
        manifest = objects.get_json(f"datasets/sft/{version}/manifest.json")
        assert chat and manifest["records"] == len(chat) and manifest["erased_records"] == len(quoting)
        assert not objects.exists("inbox/marker.md") and objects.list(area="toxic") == []
        offline = views[0].stored_rows()
        assert not any(offline.loc[offline["doc_id"] == "marker.md", "vector_fp8"].map(len))  # no values kept
        assert graph.documents_due_for_purge(timedelta(days=30), datetime.now(timezone.utc) + timedelta(days=31)) == []

    log = read_erasure_log(objects)
    assert [e["action"] for e in log] == ["delete", "purge"]
    assert {e["document"] for e in log} == {document_hash("erase-a", "marker.md")}
    assert "marker.md" not in objects.get("erasure/log.jsonl").decode()  # a hash, never the id
    assert log[1]["counts"]["inbox_files"] == 1 and log[1]["counts"]["toxic_copies"] >= 1
    assert log[1]["counts"]["retrieval_passages"] == len(hashes)
    assert log[1]["counts"]["dataset_versions"] == 1 and log[1]["counts"]["dataset_records"] == len(quoting)

    # the next ingest does not bring it back, and the neighbour still holds its own copy
    assert dg.materialize([raw_documents, parsed_chunks], partition_key="erase-a", instance=instance,
                          resources=local_resources).success
    assert MARKER not in objects.get("chunks/chunks.jsonl").decode()
    neighbour = local_resources["object_store"].for_tenant("erase-b")
    assert MARKER in neighbour.get("inbox/marker.md").decode() and neighbour.list(area="toxic")


def test_an_observation_of_purged_training_data_requests_one_retraining_per_tenant(instance):
    from datacreek_assets.defs.graph.schedules import RETRAIN_REASON
    from datacreek_assets.defs.retraining.sensors import purged_data_retrain_sensor

    instance.add_dynamic_partitions(TENANTS_PARTITION, ["erase-a", "erase-b"])
    for partition, metadata in (("erase-a", {RETRAIN_REASON: "trained on purged data"}),
                                ("erase-a", {RETRAIN_REASON: "trained on purged data"}),
                                ("erase-b", {"note": "an ordinary observation"})):
        instance.report_runless_asset_event(dg.AssetObservation(asset_key="finetuned_adapter", partition=partition,
                                                                metadata=metadata))
    result = purged_data_retrain_sensor(dg.build_sensor_context(instance=instance))
    assert [(r.partition_key, r.tags["datacreek/trigger"]) for r in result.run_requests] == [("erase-a", "erasure")]
    again = purged_data_retrain_sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
    assert again.run_requests == []
