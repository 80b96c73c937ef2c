"""The copies of one document beyond the graph: where they are and how they go.

The dataset versions quoting it are found from each version's documents index, the trainings on
those versions from their lineage files. At purge (``purge_copies``) every copy the object store and
the feature store hold is removed: the inbox file, the parsed text and chunks, the screened-out
(toxic) copies with all their versions, the SFT records that quote it (as source or passage) in
every dataset version, and the feature store's rows with its values. Every step is written to the
tenant's erasure log, which keeps a hash of the document id, never the id.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from datacreek_assets.object_store import TenantObjectStore

ERASURE_LOG = "erasure/log.jsonl"
DATASET_PREFIX = "datasets/sft"
DOCUMENTS_INDEX = "documents.json"
PARSED_FILES = ("parsed/documents.jsonl", "chunks/chunks.jsonl")  # the ingest assets' hand-offs
QUARANTINE_FILE = "parsed/quarantine.json"  # documents that could not be parsed, with the reason


def document_hash(tenant_id: str, doc_id: str) -> str:
    """What the log keeps: a keyed hash (the tenant id as key), so equal names of two tenants differ."""
    return hashlib.sha256(f"{tenant_id}\0{doc_id}".encode()).hexdigest()


def log_erasure(objects: TenantObjectStore, action: str, doc_id: str, counts: dict, now: datetime | None = None,
                **details) -> dict:
    """Append an entry; ``details`` hold names that are no personal data (run keys, versions)."""
    entry = {"at": (now or datetime.now(timezone.utc)).isoformat(), "action": action,
             "document": document_hash(objects.tenant_id, doc_id), "counts": counts, **details}
    previous = objects.get(ERASURE_LOG) if objects.exists(ERASURE_LOG) else b""
    objects.put(ERASURE_LOG, previous + json.dumps(entry, sort_keys=True).encode() + b"\n")
    return entry


def read_erasure_log(objects: TenantObjectStore) -> list[dict]:
    return objects.get_jsonl(ERASURE_LOG) if objects.exists(ERASURE_LOG) else []


def remove_copies(objects: TenantObjectStore, key: str, keep_latest: bool) -> int:
    """Delete the stored copies of ``key`` (in a versioned bucket, the older versions too)."""
    folder = key.rsplit("/", 1)[0]
    removed = 0
    for version in objects.versions(folder=folder):
        if version.key == key and not (keep_latest and version.latest):
            objects.delete_version(version)
            removed += 1
    return removed


def dataset_versions_with(objects: TenantObjectStore, doc_id: str, chunk_texts: list[str] = ()) -> dict[str, list[str]]:
    """SFT version -> ids of its records that quote the document, read from each version's
    documents index. A version written before the index existed is read record by record: its
    source lineage, and passages holding the start of one of the document's chunks."""
    versions = sorted({key.split("/")[2] for key in objects.list(DATASET_PREFIX) if key.count("/") == 3})
    found = {}
    for version in versions:
        folder = f"{DATASET_PREFIX}/{version}"
        if objects.exists(f"{folder}/{DOCUMENTS_INDEX}"):
            ids = objects.get_json(f"{folder}/{DOCUMENTS_INDEX}").get(doc_id, [])
        elif objects.exists(f"{folder}/chat.jsonl"):
            starts = [text[:120] for text in chunk_texts if text]
            ids = [row["id"] for row in objects.get_jsonl(f"{folder}/chat.jsonl")
                   if row.get("lineage", {}).get("doc_id") == doc_id
                   or any(start in row["messages"][1]["content"] for start in starts)]
        else:
            ids = []
        if ids:
            found[version] = sorted(ids)
    return found


def rewrite_dataset_version(objects: TenantObjectStore, version: str, record_ids: list[str]) -> int:
    """The version without those records (chat, Alpaca, index and manifest counts); older stored
    copies of the rewritten files go too. The version keeps its name: trainings refer to it."""
    from datacreek_assets.datasets.sft import to_jsonl

    folder, drop = f"{DATASET_PREFIX}/{version}", set(record_ids)
    removed = 0
    for name in ("chat.jsonl", "alpaca.jsonl"):
        key = f"{folder}/{name}"
        if objects.exists(key):
            rows = objects.get_jsonl(key)
            kept = [row for row in rows if row.get("id") not in drop]
            objects.put(key, to_jsonl(kept))
            remove_copies(objects, key, keep_latest=True)
            if name == "chat.jsonl":
                removed = len(rows) - len(kept)
    for name, change in ((DOCUMENTS_INDEX, lambda index: {d: [i for i in ids if i not in drop]
                                                           for d, ids in index.items() if set(ids) - drop}),
                         ("manifest.json", lambda m: {**m, "records": m.get("records", 0) - removed,
                                                      "erased_records": m.get("erased_records", 0) + removed})):
        key = f"{folder}/{name}"
        if objects.exists(key):
            objects.put_json(key, change(objects.get_json(key)))
            remove_copies(objects, key, keep_latest=True)
    return removed


def purge_copies(objects: TenantObjectStore, feature_views: list, doc_id: str,
                 chunk_texts: list[str] = ()) -> dict[str, int]:
    """Remove every object-store and feature-store copy of a purged document; returns counts."""
    counts = {"inbox_files": 0, "parsed_rows": 0, "toxic_copies": 0, "feature_rows": 0,
              "dataset_versions": 0, "dataset_records": 0}
    counts["inbox_files"] = remove_copies(objects, f"inbox/{doc_id}", keep_latest=False)
    for key in PARSED_FILES:  # rewritten now: the next ingest run is not when the text goes
        if objects.exists(key):
            rows = objects.get_jsonl(key)
            kept = [row for row in rows if row.get("doc_id") != doc_id]
            if len(kept) != len(rows):
                objects.put_jsonl(key, kept)
                counts["parsed_rows"] += len(rows) - len(kept)
            remove_copies(objects, key, keep_latest=True)  # older versions may hold the text
    if objects.exists(QUARANTINE_FILE):
        entries = objects.get_json(QUARANTINE_FILE)
        kept = [entry for entry in entries if entry.get("doc_id") != doc_id]
        if len(kept) != len(entries):
            objects.put_json(QUARANTINE_FILE, kept)
        remove_copies(objects, QUARANTINE_FILE, keep_latest=True)
        counts["quarantine_entries"] = len(entries) - len(kept)
    for version in objects.versions(area="toxic", folder=doc_id):
        objects.delete_version(version, area="toxic")
        counts["toxic_copies"] += 1
    counts["feature_rows"] = sum(view.erase_document(doc_id) for view in feature_views)
    # the dataset versions last: their indexes are how a purge that failed before here finds them again
    for version, record_ids in dataset_versions_with(objects, doc_id, chunk_texts).items():
        counts["dataset_records"] += rewrite_dataset_version(objects, version, record_ids)
        counts["dataset_versions"] += 1
    return counts


def trainings_with(tenant_dir, dataset_versions) -> list[str]:
    """Run keys of the tenant's trainings on any of ``dataset_versions`` (from each training's
    ``lineage.json``; a training from before it, by ``latest.json`` when it is the newest)."""
    from pathlib import Path

    versions, runs = set(dataset_versions), Path(tenant_dir) / "runs"
    latest = Path(tenant_dir) / "latest.json"
    newest = json.loads(latest.read_text()) if latest.is_file() else {}
    found = []
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        lineage = folder / "lineage.json"
        if lineage.is_file():
            version = json.loads(lineage.read_text()).get("dataset_version")
        else:
            version = newest.get("dataset_version") if newest.get("run_key") == folder.name else None
        if version in versions:
            found.append(folder.name)
    return found


def tainted_releases(live_releases, run_keys: list[str]) -> list[str]:
    """Versions of the live releases (production or canary; ``ServingStore.live(...).values()``)
    serving one of those trainings."""
    tainted = set(run_keys)
    return sorted(release.version for release in live_releases if release.run_key in tainted)


PURGED_TRAININGS = "erasure_purged_trainings.json"  # in the tenant's models folder, read by model_gc


def mark_purged_trainings(tenant_dir, run_keys: list[str]) -> None:
    """Trainings that learnt from purged data: model_gc no longer keeps them as best or young."""
    from pathlib import Path

    from datacreek_assets.finetune.training import write_json_atomic

    path = Path(tenant_dir) / PURGED_TRAININGS
    known = set(json.loads(path.read_text())) if path.is_file() else set()
    write_json_atomic(path, sorted(known | set(run_keys)))


def purged_trainings(tenant_dir) -> set[str]:
    from pathlib import Path

    path = Path(tenant_dir) / PURGED_TRAININGS
    return set(json.loads(path.read_text())) if path.is_file() else set()
