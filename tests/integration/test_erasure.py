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
from datacreek_assets.defs.graph.schedules import UNDO_WINDOW
from datacreek_assets.erasure.actions import delete_document, undo_delete
from datacreek_assets.erasure.documents import document_hash, purged_trainings, read_erasure_log
from datacreek_assets.graph.sync import OPERATOR
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.retrieval.index import load_current
from tests.stored_text import feature_store_text, folder_text, marked_module, object_store_text, online_values_held

pytestmark = pytest.mark.integration
MARKER = "zqxmarker7731"


def corpus() -> dict[str, str]:
    """Two documents of the demo corpus, the first carrying the marker."""
    from datacreek_assets.demo_corpus import MODULES, module_text

    other_title, other_body = module_text(MODULES[1])
    return {"marker.md": marked_module(MODULES[0], MARKER), "other.md": f"# The {other_title} module\n\n{other_body}\n"}


def everything_stored(objects, graph, views, models) -> str:
    """Every byte the tenant's stores hold, decoded: object-store objects (both areas), the graph's
    nodes and edges, the feature store offline and online, every file of its models folder."""
    return "\n".join([object_store_text(objects), folder_text(models), *graph.fingerprint(), feature_store_text(views)])


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
        assert MARKER in folder_text(folder)  # the scan reads numpy archives
        version = objects.get_json("datasets/sft/latest.json")["version"]
        quoting = objects.get_json(f"datasets/sft/{version}/documents.json")["marker.md"]
        assert quoting and MARKER in objects.get(f"datasets/sft/{version}/chat.jsonl").decode()
        before = views[0].lookup(hashes)
        passages = load_current(folder, "erase-a").doc_ids.count("marker.md")
        assert passages == len(hashes)

        def served() -> tuple[set, int, int]:
            """What lookups, the retrieval index and the vectors file give for the document now."""
            looked_up = {v is None for v in views[0].lookup(hashes).values()}
            return (looked_up, load_current(folder, "erase-a").doc_ids.count("marker.md"),
                    int((read_vectors(objects)[0]["doc_id"] == "marker.md").sum()))

        # delete: the graph hides it; its vectors and passages are gone from lookups at once
        stale_vectors = objects.get("embeddings/vectors.parquet")
        report = delete_document(graph, objects, views, models, [], "marker.md", by=OPERATOR)
        assert report["counts"]["feature_rows_hidden"] == len(hashes) == report["counts"]["vector_file_rows"]
        assert report["counts"]["retrieval_passages_hidden"] == passages
        assert report["dataset_versions"] == [version] and report["counts"]["dataset_records"] == len(quoting)
        assert served() == ({True}, 0, 0)
        assert all(v is not None for v in views[0].lookup(others).values())
        with pytest.raises(LookupError, match="no live document"):
            delete_document(graph, objects, views, models, [], "marker.md", by=OPERATOR)
        # a chunk_embeddings run that began before the delete writes the vectors file with the
        # document again: embedding_features does not bring its hidden rows back
        objects.put("embeddings/vectors.parquet", stale_vectors)
        assert dg.materialize([embedding_features], partition_key="erase-a", instance=instance,
                              resources=local_resources).success
        assert served()[:2] == ({True}, 0)

        # undo: everything is back at once, the same vectors (the hidden rows kept their values)
        restored = undo_delete(graph, objects, views, models, "marker.md", UNDO_WINDOW)
        assert restored["counts"] == {"feature_rows_restored": len(hashes), "retrieval_passages_restored": passages}
        assert "marker.md" in {c["doc_id"] for c in graph.live_chunks()}
        assert all((views[0].lookup([h])[h] == before[h]).all() for h in hashes)
        assert served()[:2] == ({False}, passages)
        assert dg.materialize([chunk_embeddings, embedding_features], partition_key="erase-a", instance=instance,
                              resources=local_resources).success  # the vectors file's rows are recomputed
        assert served() == ({False}, passages, len(hashes))

        # delete again, and purge 31 days on: every copy in every store goes; the training on that
        # dataset version (its lineage names it) is tainted and recorded for model_gc
        delete_document(graph, objects, views, models, [], "marker.md", by=OPERATOR)
        (models / "runs" / "k-on-marker").mkdir(parents=True)
        (models / "runs" / "k-on-marker" / "lineage.json").write_text(json.dumps({"dataset_version": version}))
        (models / "eval").mkdir(parents=True)
        (models / "eval" / "k-on-marker.json").write_text(json.dumps({
            "dataset_version": version, "tuned": {"f1": 0.5}, "examples": [{"question": f"Who is {MARKER}?"}]}))
        # the first purge fails after rewriting the dataset version, where the training is found
        # from: run again, it still knows the training (from the plan it logged first)
        import datacreek_assets.erasure.documents as documents

        def rewrite_then_fail(*args):
            rewrite(*args)
            raise OSError("the object store went away")

        quarantined = objects.get_json("parsed/quarantine.json")  # as if a later version had been unparseable
        objects.put_json("parsed/quarantine.json", [*quarantined, {"doc_id": "marker.md", "reason": "broken"}])
        rewrite, later = documents.rewrite_dataset_version, datetime.now(timezone.utc) + timedelta(days=31)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(documents, "rewrite_dataset_version", rewrite_then_fail)
            with pytest.raises(OSError):
                purge_tenant(graph, objects, views, models, now=later)
        purged, reports, tainted = purge_tenant(graph, objects, views, models, now=later)
        assert len(reports) == 1 and purged > 0 and tainted == ["k-on-marker"]
        assert purged_trainings(models) == {"k-on-marker"}
        stored = everything_stored(objects, graph, views, models)
        assert MARKER not in stored
        assert corpus()["other.md"][40:120] in stored  # the other document is untouched
        evaluation = json.loads((models / "eval" / "k-on-marker.json").read_text())
        assert evaluation["tuned"] == {"f1": 0.5} and evaluation["examples_erased"] == 1  # the scores stay
        chat = objects.get_jsonl(f"datasets/sft/{version}/chat.jsonl")
        manifest = objects.get_json(f"datasets/sft/{version}/manifest.json")
        assert chat and manifest["records"] == len(chat) and manifest["erased_records"] == len(quoting)
        assert not objects.exists("inbox/marker.md") and objects.list(area="toxic") == []
        assert objects.get_json("parsed/quarantine.json") == quarantined
        assert not objects.list("reports")  # the graph's picture named the document's entities
        offline = views[0].stored_rows()
        assert not any(offline.loc[offline["doc_id"] == "marker.md", "vector_fp8"].map(len))  # no values kept
        assert online_values_held(views[0], hashes) == 0 and online_values_held(views[0], others) == len(others)
        assert graph.documents_due_for_purge(timedelta(days=30), datetime.now(timezone.utc) + timedelta(days=31)) == []

    log = read_erasure_log(objects)
    assert [e["action"] for e in log] == ["delete", "undo", "delete", "purge-plan", "purge"]
    assert log[3]["trainings"] == ["k-on-marker"]
    assert {e["document"] for e in log} == {document_hash("erase-a", "marker.md")}
    assert "marker.md" not in objects.get("erasure/log.jsonl").decode()  # a hash, never the id
    # the report is the finishing attempt's: the failed one had removed all but the graph nodes
    purge = log[-1]["counts"]
    assert purge["tainted_trainings"] == 1 and purge["feature_rows"] == len(hashes)  # as tombstones
    assert purge["inbox_files"] == purge["toxic_copies"] == purge["eval_reports"] == purge["pictures"] == 0
    assert purge["dataset_versions"] == purge["vector_file_rows"] == 0

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
