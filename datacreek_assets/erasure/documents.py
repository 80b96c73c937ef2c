"""Deleting, restoring and purging one document beyond the graph.

At delete, its vectors are tombstoned in the feature store at once (lookups return nothing from
then on, not from the next materialization). At undo, the graph is restored and the next
``embedding_features`` writes its vectors again (the tombstone keeps no values to restore from).
At purge, every copy the object store and the feature store hold is removed: the inbox file, the
parsed text and chunks, the screened-out (toxic) copies with all their versions, and the
offline files' rows with its values. Every step is written to the tenant's erasure log, which
keeps a hash of the document id, never the id.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from datacreek_assets.object_store import TenantObjectStore

ERASURE_LOG = "erasure/log.jsonl"
PARSED_FILES = ("parsed/documents.jsonl", "chunks/chunks.jsonl")  # the ingest assets' hand-offs


def document_hash(tenant_id: str, doc_id: str) -> str:
    """What the log keeps: a keyed hash (the tenant id as key), so equal names of two tenants differ."""
    return hashlib.sha256(f"{tenant_id}\0{doc_id}".encode()).hexdigest()


def log_erasure(objects: TenantObjectStore, action: str, doc_id: str, counts: dict, now: datetime | None = None) -> dict:
    entry = {"at": (now or datetime.now(timezone.utc)).isoformat(), "action": action,
             "document": document_hash(objects.tenant_id, doc_id), "counts": counts}
    previous = objects.get(ERASURE_LOG) if objects.exists(ERASURE_LOG) else b""
    objects.put(ERASURE_LOG, previous + json.dumps(entry, sort_keys=True).encode() + b"\n")
    return entry


def read_erasure_log(objects: TenantObjectStore) -> list[dict]:
    return objects.get_jsonl(ERASURE_LOG) if objects.exists(ERASURE_LOG) else []


def hide_vectors(feature_views: list, doc_id: str) -> int:
    return sum(view.tombstone_document(doc_id) for view in feature_views)


def _older_copies(objects: TenantObjectStore, key: str, keep_latest: bool) -> int:
    """Delete the stored copies of ``key`` (in a versioned bucket, the older versions too)."""
    folder = key.rsplit("/", 1)[0]
    removed = 0
    for version in objects.versions(folder=folder):
        if version.key == key and not (keep_latest and version.latest):
            objects.delete_version(version)
            removed += 1
    return removed


def purge_copies(objects: TenantObjectStore, feature_views: list, doc_id: str) -> dict[str, int]:
    """Remove every object-store and feature-store copy of a purged document; returns counts."""
    counts = {"inbox_files": 0, "parsed_rows": 0, "toxic_copies": 0, "feature_rows": 0}
    counts["inbox_files"] = _older_copies(objects, f"inbox/{doc_id}", keep_latest=False)
    for key in PARSED_FILES:  # rewritten now: the next ingest run is not when the text goes
        if objects.exists(key):
            rows = objects.get_jsonl(key)
            kept = [row for row in rows if row.get("doc_id") != doc_id]
            if len(kept) != len(rows):
                objects.put_jsonl(key, kept)
                _older_copies(objects, key, keep_latest=True)  # the rewrite's predecessors held the text
                counts["parsed_rows"] += len(rows) - len(kept)
    for version in objects.versions(area="toxic", folder=doc_id):
        objects.delete_version(version, area="toxic")
        counts["toxic_copies"] += 1
    counts["feature_rows"] = sum(view.erase_document(doc_id) for view in feature_views)
    return counts
