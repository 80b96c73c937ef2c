"""Delete, undo and purge of one document across every store, each returning its erasure report.

- delete: the graph marks it ``deleted_at``; its feature-store rows are marked deleted with their
  values kept (lookups return nothing at once); its vectors leave ``embeddings/vectors.parquet``
  (so no later ``embedding_features`` writes them back) and its passages leave the published
  retrieval index (answers stop quoting it at once). The dataset versions that quote it, the
  trainings on them and their live releases are listed: they are tainted.
- undo (within 30 days): the graph, the feature-store rows and the retrieval index come back at once;
  ``chunk_embeddings`` recomputes the document's vectors file rows at its next run.
- purge (30 days on): every copy is hard-deleted (``purge_document``); the trainings that learnt from
  it are recorded, so they are retrained and stop being kept by model_gc.

The report says what was done where, in counts; the erasure log keeps it under a hash of the id.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

from datacreek_assets.embeddings import VECTORS_KEY
from datacreek_assets.erasure.documents import (
    dataset_versions_with,
    log_erasure,
    purge_copies,
    remove_copies,
    tainted_releases,
    trainings_with,
)
from datacreek_assets.object_store import TenantObjectStore

REPORTS_FOLDER = "reports"  # pictures of the tenant's data; the graph's shows entity names


class NotDeletable(LookupError):
    """The document is not live (delete) or not deleted within the undo window (undo)."""


def drop_vector_rows(objects: TenantObjectStore, doc_id: str, every_copy: bool) -> int:
    """Rewrite the vectors file without the document's rows; with ``every_copy`` its older stored
    versions go too (they hold the rows)."""
    import pandas as pd

    if not objects.exists(VECTORS_KEY):
        return 0
    frame = pd.read_parquet(io.BytesIO(objects.get(VECTORS_KEY)))
    kept = frame[frame["doc_id"] != doc_id]
    if len(kept) != len(frame):
        buffer = io.BytesIO()
        kept.to_parquet(buffer, index=False)
        objects.put(VECTORS_KEY, buffer.getvalue())
    if every_copy:
        remove_copies(objects, VECTORS_KEY, keep_latest=True)
    return len(frame) - len(kept)


def _chunk_view(feature_views: list):
    return next(view for view in feature_views if view.view == "chunk_embeddings")


def delete_document(graph, objects: TenantObjectStore, feature_views: list, tenant_dir: Path, live_releases,
                    doc_id: str, by: str) -> dict:
    """Soft-delete ``doc_id`` everywhere it is served from; raises NotDeletable when it is not live.
    The graph is written last: a delete that fails before it leaves the document live, and running
    it again finishes the job (each step is idempotent)."""
    from datacreek_assets.retrieval.index import hide_document

    if doc_id not in {d for d, s in graph.document_states().items() if s["deleted_at"] is None}:
        raise NotDeletable(f"tenant {graph.tenant_id!r} has no live document {doc_id!r}")
    counts = {
        "feature_rows_hidden": sum(view.hide_document(doc_id) for view in feature_views),
        "vector_file_rows": drop_vector_rows(objects, doc_id, every_copy=False),
        "retrieval_passages_hidden": hide_document(Path(tenant_dir) / "retrieval", graph.tenant_id, doc_id),
    }
    if graph.soft_delete_documents([doc_id], by=by) == 0:
        raise NotDeletable(f"tenant {graph.tenant_id!r} has no live document {doc_id!r}")
    quoted = dataset_versions_with(objects, doc_id)
    trainings = trainings_with(tenant_dir, quoted)
    releases = tainted_releases(live_releases, trainings)
    counts.update({"dataset_versions": len(quoted), "dataset_records": sum(len(ids) for ids in quoted.values()),
                   "tainted_trainings": len(trainings), "tainted_releases": len(releases)})
    entry = log_erasure(objects, "delete", doc_id, counts)
    return {**entry, "dataset_versions": sorted(quoted), "trainings": trainings, "releases": releases}


def undo_delete(graph, objects: TenantObjectStore, feature_views: list, tenant_dir: Path, doc_id: str,
                undo_window) -> dict:
    """Restore a document deleted within ``undo_window``: graph, feature rows, retrieval passages.
    An undo that failed after the graph step is finished by running it again."""
    from datacreek_assets.retrieval.index import build_index, load_current, publish

    restored = graph.restore_document(doc_id, undo_window)
    live = graph.document_states().get(doc_id, {"deleted_at": "absent"})["deleted_at"] is None
    if not (restored or live):
        raise NotDeletable(f"tenant {graph.tenant_id!r} has no document {doc_id!r} deleted within the undo window")
    counts = {"feature_rows_restored": sum(view.restore_document(doc_id) for view in feature_views)}
    folder = Path(tenant_dir) / "retrieval"
    current = load_current(folder, graph.tenant_id) if folder.is_dir() else None
    if current is not None:  # rebuilt from what is live now: the restored rows and chunks included
        index, _ = build_index(graph.tenant_id, _chunk_view(feature_views).stored_rows(), graph.live_chunks())
        publish(index, folder)
        counts["retrieval_passages_restored"] = index.doc_ids.count(doc_id) - current.doc_ids.count(doc_id)
    if not restored and not any(counts.values()):
        raise NotDeletable(f"tenant {graph.tenant_id!r}: document {doc_id!r} is not deleted")
    return log_erasure(objects, "undo", doc_id, counts)


def strip_eval_examples(tenant_dir: Path) -> int:
    """Evaluation reports keep their scores and lose their examples: questions, references and
    answers (retrieval puts any live document's passages in front of the model) may quote the
    document. The next evaluation writes new ones. Returns the reports changed."""
    from datacreek_assets.finetune.training import write_json_atomic

    changed = 0
    for path in sorted((Path(tenant_dir) / "eval").glob("*.json")):
        report = json.loads(path.read_text())
        if report.get("examples"):
            write_json_atomic(path, {**report, "examples": [], "examples_erased": len(report["examples"])})
            changed += 1
    return changed


def pending_purge(objects: TenantObjectStore, doc_id: str) -> dict | None:
    """The plan of a purge of ``doc_id`` that started and did not finish, from the erasure log."""
    from datacreek_assets.erasure.documents import document_hash, read_erasure_log

    mine = [e for e in read_erasure_log(objects) if e["document"] == document_hash(objects.tenant_id, doc_id)]
    return mine[-1] if mine and mine[-1]["action"] == "purge-plan" else None


def purge_document(graph, objects: TenantObjectStore, feature_views: list, tenant_dir: Path | None,
                   doc_id: str, now: datetime | None = None, hot_graph=None,
                   review_store=None) -> tuple[dict, list[str]]:
    """Hard-delete every copy of a soft-deleted document but its graph nodes (``purge_deleted``
    removes those after, for all due documents at once); returns the log entry and the trainings
    on a version that quoted it. The plan (those trainings) is logged and recorded for model_gc
    first, and the dataset versions, which are how the trainings are found, are rewritten last:
    a failed purge is run again and finds the same trainings."""
    from datacreek_assets.erasure.documents import mark_purged_trainings
    from datacreek_assets.retrieval.index import erase_document

    texts = graph.document_chunk_texts(doc_id)
    plan = pending_purge(objects, doc_id)
    trainings = trainings_with(tenant_dir, dataset_versions_with(objects, doc_id, texts)) if tenant_dir else []
    trainings = sorted(set(trainings) | set(plan["trainings"] if plan else []))
    if plan is None:
        log_erasure(objects, "purge-plan", doc_id, {"tainted_trainings": len(trainings)}, now, trainings=trainings)
    if trainings:
        mark_purged_trainings(tenant_dir, trainings)
    counts = {"pictures": 0}
    if hot_graph is not None:  # FalkorDB, the hot layer
        counts["hot_graph_nodes"] = hot_graph.delete_document(graph.tenant_id, doc_id)
    if review_store is not None:  # queued edges quote their sentences and chunks
        counts["review_queue_rows"] = review_store.forget_documents(graph.tenant_id, [doc_id])
    if tenant_dir is not None:
        counts["retrieval_passages"] = erase_document(Path(tenant_dir) / "retrieval", graph.tenant_id, doc_id)
        counts["eval_reports"] = strip_eval_examples(Path(tenant_dir))
    counts["vector_file_rows"] = drop_vector_rows(objects, doc_id, every_copy=True)
    for version in objects.versions(folder=REPORTS_FOLDER):  # redrawn by their assets' next runs
        objects.delete_version(version)
        counts["pictures"] += 1
    counts.update(purge_copies(objects, feature_views, doc_id, texts))
    counts["tainted_trainings"] = len(trainings)
    return log_erasure(objects, "purge", doc_id, counts, now), trainings


def report_markdown(entry: dict) -> str:
    """The erasure report as a table for the asset's page in the UI."""
    rows = "\n".join(f"| {what.replace('_', ' ')} | {n} |" for what, n in sorted(entry["counts"].items()))
    return f"| {entry['action']} ({entry['at']}) | count |\n|---|---|\n{rows}"
