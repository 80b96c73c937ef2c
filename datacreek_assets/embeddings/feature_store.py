"""Feast, tenant-scoped: writing fp8 vectors and looking them up.

Local: parquet offline store (one file per tenant under one directory) and a
SQLite online store. Prod: the same definitions with S3 offline and Redis
online settings. Writes go to the offline file and straight into the online
store (Feast's write_to_online_store), so materialization is part of the asset.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from datacreek_assets.embeddings.fp8 import dequantize
from datacreek_assets.metrics import FeatureCacheMetrics
from datacreek_assets.tenancy import validate_tenant_id

PROJECT = "datacreek"


@dataclass(frozen=True)
class FeatureStoreSettings:
    registry: str  # file path or s3:// URI of the Feast registry
    offline_dir: str  # directory (or s3:// prefix) holding one parquet file per tenant and view
    online: dict = field(default_factory=dict)  # Feast online_store config
    s3_endpoint: str = ""  # custom S3 endpoint (MinIO, moto); empty for AWS

    def filesystem(self, path: str):
        """(pyarrow filesystem, path) for a local or s3:// path, as Feast's file source resolves it."""
        from pyarrow import fs

        if path.startswith("s3://"):
            return fs.S3FileSystem(endpoint_override=self.s3_endpoint or None, region="us-east-1"), path[len("s3://"):]
        return fs.LocalFileSystem(), path

    def repo_config(self):
        from feast.repo_config import RepoConfig

        return RepoConfig(
            project=PROJECT,
            provider="local",
            registry=self.registry,
            online_store=self.online,
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
        )


_applied: dict[str, object] = {}


def open_feature_store(settings: FeatureStoreSettings):
    """A FeatureStore with Datacreek's definitions applied (once per process and registry)."""
    from feast import FeatureStore

    from datacreek_assets.quiet import quiet_third_party
    from feature_repo.features import definitions

    quiet_third_party()  # importing feast turned every DeprecationWarning on: the filters go back in front
    if not settings.offline_dir.startswith("s3://"):
        for view in ("chunk_embeddings", "chunk_topology"):
            Path(settings.offline_dir, view).mkdir(parents=True, exist_ok=True)
        Path(settings.registry).parent.mkdir(parents=True, exist_ok=True)
    key = repr(settings)
    if key not in _applied:
        store = FeatureStore(config=settings.repo_config(), repo_path=str(Path(__file__).resolve().parents[2] / "feature_repo"))
        store.apply(definitions(settings.offline_dir, settings.s3_endpoint or None))
        _applied[key] = store
    return _applied[key]


class TenantFeatures:
    """One tenant's vectors in the feature store. The tenant id is injected into
    every key, so no call can read or write another tenant's rows."""

    def __init__(self, store, settings: FeatureStoreSettings, tenant_id: str,
                 metrics: FeatureCacheMetrics | None = None, cache_size: int = 100_000,
                 view: str = "chunk_embeddings"):
        self.view = view
        self.store = store
        self.settings = settings
        self.tenant_id = validate_tenant_id(tenant_id)
        self.metrics = metrics or FeatureCacheMetrics.for_registry()
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._cache_size = cache_size
        self.hits = 0
        self.misses = 0

    @property
    def offline_path(self) -> str:
        return f"{self.settings.offline_dir.rstrip('/')}/{self.view}/{self.tenant_id}.parquet"

    def stored_rows(self):
        """The tenant's offline rows (an empty frame before the first write)."""
        import pandas as pd
        from pyarrow import fs

        filesystem, path = self.settings.filesystem(self.offline_path)
        if filesystem.get_file_info(path).type != fs.FileType.NotFound:
            return pd.read_parquet(path, filesystem=filesystem)
        else:
            return pd.DataFrame(columns=["tenant_id", "embedding_hash", "deleted", "chunk_id", "doc_id",
                                         "event_timestamp"])

    def tombstones(self, rows):
        """Rows marking features deleted; the feature values themselves are not kept."""
        empty = {"vector_fp8": b"", "scale": 0.0} if self.view == "chunk_embeddings" else {"doc_signature": b""}
        return rows[["embedding_hash", "chunk_id", "doc_id"]].assign(**empty, deleted=True)

    def write(self, rows) -> int:
        """Upsert rows (embedding_hash, vector_fp8, scale, deleted, chunk_id, doc_id) offline and online."""
        import pandas as pd

        if rows.empty:
            return 0
        rows = rows.copy()
        rows["tenant_id"] = self.tenant_id
        rows["event_timestamp"] = datetime.now(timezone.utc)
        # Online first: the offline file is what the next run diffs against, so it must
        # never claim rows the online store did not get.
        self.store.write_to_online_store(self.view, rows)
        current = self.stored_rows()
        kept = current[~current["embedding_hash"].isin(rows["embedding_hash"])]
        merged = pd.concat([kept, rows], ignore_index=True) if len(kept) else rows
        _write_parquet_atomically(merged, *self.settings.filesystem(self.offline_path))
        for h in rows["embedding_hash"]:
            self._cache.pop(h, None)
        return len(rows)

    def live_values(self, column: str | None = None) -> dict:
        """embedding_hash -> stored value of ``column`` (None without one), for rows not deleted."""
        rows = self.stored_rows()
        if not len(rows):
            return {}
        live = rows[~rows["deleted"].astype(bool)]
        return dict(zip(live["embedding_hash"], live[column] if column else [None] * len(live)))

    def live_count(self) -> int:
        return len(self.live_values())

    def sync(self, upserts, keep: set[str]) -> tuple[int, int]:
        """Write ``upserts`` (new or changed rows) and tombstone every live row whose hash is
        not in ``keep``; returns (rows written, rows tombstoned)."""
        import pandas as pd

        stored = self.stored_rows()
        gone = stored[~stored["deleted"].astype(bool) & ~stored["embedding_hash"].isin(keep)] if len(stored) else stored
        changes = [frame for frame in (upserts, self.tombstones(gone) if len(gone) else None)
                   if frame is not None and len(frame)]
        if changes:
            self.write(pd.concat(changes, ignore_index=True))
        return len(upserts), len(gone)

    def drop_all(self) -> int:
        """Tenant removal: tombstone every vector online, then delete the offline file."""
        rows = self.stored_rows()
        live = rows[~rows["deleted"].astype(bool)] if len(rows) else rows
        if len(live):
            self.write(self.tombstones(live))
        from pyarrow import fs

        filesystem, path = self.settings.filesystem(self.offline_path)
        if filesystem.get_file_info(path).type != fs.FileType.NotFound:
            filesystem.delete_file(path)
        self._cache.clear()
        return len(live)

    def lookup(self, hashes: list[str]) -> dict[str, np.ndarray | None]:
        """Vectors (dequantized float32) for hashes; None for unknown or soft-deleted ones.
        A hash looked up before is served from the cache (a hit)."""
        result: dict[str, np.ndarray | None] = {}
        missing = []
        for h in hashes:
            if h in self._cache:
                self._cache.move_to_end(h)
                result[h] = self._cache[h]
                self.hits += 1
                self.metrics.hits.labels(tenant=self.tenant_id).inc()
            else:
                missing.append(h)
        if missing:
            self.misses += len(missing)
            self.metrics.misses.labels(tenant=self.tenant_id).inc(len(missing))
            for h, row in zip(missing, self.online_rows(missing, ["vector_fp8", "scale"])):
                vector = None if row is None or not row["vector_fp8"] else dequantize([row["vector_fp8"]], [row["scale"]])[0]
                result[h] = vector
                self._cache[h] = vector
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return result

    def online_rows(self, hashes: list[str], features: list[str]) -> list[dict | None]:
        """Raw online feature values of this view for the tenant's hashes (None: unknown or deleted)."""
        online = self.store.get_online_features(
            features=[f"{self.view}:{name}" for name in (*features, "deleted")],
            entity_rows=[{"tenant_id": self.tenant_id, "embedding_hash": h} for h in hashes],
        ).to_dict()
        rows = []
        for i in range(len(hashes)):
            if online["deleted"][i] is None or online["deleted"][i]:
                rows.append(None)
            else:
                rows.append({name: online[name][i] for name in features})
        return rows

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _write_parquet_atomically(frame, filesystem, path: str) -> None:
    from pyarrow import fs

    if not isinstance(filesystem, fs.LocalFileSystem):
        frame.to_parquet(path, index=False, filesystem=filesystem)  # an S3 PUT replaces the object atomically
        return
    target = Path(path)
    tmp = target.parent / f".{target.name}.tmp"  # dot files are ignored by parquet readers
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(target)
