"""Feast, tenant-scoped: writing fp8 vectors and looking them up.

Local: parquet offline store and a SQLite online store. Prod: the same
definitions with S3 offline and Redis online settings. Writes go straight into
the online store (Feast's write_to_online_store), so materialization is part
of the asset, and into the offline store as one new parquet file per write
under ``<view>/<tenant>/``: a write costs its own rows, not the tenant's whole
history, and two overlapping writes cannot lose each other's rows. Reading
keeps each hash's newest row; compaction folds the files it read into one.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from datacreek_assets.embeddings.fp8 import dequantize
from datacreek_assets.metrics import FeatureCacheMetrics
from datacreek_assets.tenancy import validate_tenant_id

log = logging.getLogger(__name__)
PROJECT = "datacreek"
COMPACT_AT = 8  # offline files per tenant and view before a write folds them into one


def redis_connection_string(connection: str, timeout_s: float) -> str:
    """Feast's Redis ``connection_string`` ("host:port[,key=value...]", a standalone server, Feast's
    default redis_type) with a connect and a command timeout of ``timeout_s`` and no retries,
    where it does not set them itself: a server that stops answering then fails a read or write
    with redis' TimeoutError instead of hanging it (redis' default retries would cost each command
    several timeouts). Feast hands each key=value to ``redis.Redis``, values read as JSON ("null":
    None, no retry). ``timeout_s`` is the resource's checked setting (`FeatureStoreResource`)."""
    if not connection.strip() or "=" in connection.split(",", 1)[0]:
        # the string itself is not echoed: it may hold a password
        raise ValueError("the Redis online store needs a connection string that starts with host:port "
                         "(\"host:port[,key=value...]\")")
    named = {part.split("=", 1)[0].strip() for part in connection.split(",") if "=" in part}
    defaults = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s, "retry": "null"}
    return ",".join([connection, *(f"{key}={value}" for key, value in defaults.items() if key not in named)])


@dataclass(frozen=True)
class FeatureStoreSettings:
    registry: str  # file path or s3:// URI of the Feast registry
    offline_dir: str  # directory (or s3:// prefix): <view>/<tenant>/<one parquet file per write>
    online: dict = field(default_factory=dict)  # Feast online_store config
    s3_endpoint: str = ""  # custom S3 endpoint (MinIO, moto); empty for AWS
    s3_region: str = ""  # "": AWS_REGION or AWS_DEFAULT_REGION, else us-east-1
    # (key id, secret, session token) from the S3Resource's config; None: the AWS default chain
    # (environment, profile, the pod's web identity), which pyarrow's S3 client reads itself
    s3_credentials: tuple | None = field(default=None, repr=False)

    def filesystem(self, path: str):
        """(pyarrow filesystem, path) for a local or s3:// path, as Feast's file source resolves it."""
        from pyarrow import fs

        if path.startswith("s3://"):
            key, secret, token = self.s3_credentials or (None, None, None)
            region = self.s3_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            return fs.S3FileSystem(endpoint_override=self.s3_endpoint or None, region=region,
                                   access_key=key, secret_key=secret, session_token=token), path[len("s3://"):]
        return fs.LocalFileSystem(), path

    def repo_config(self):
        import_feast()
        from feast.repo_config import RepoConfig

        return RepoConfig(
            project=PROJECT,
            provider="local",
            registry=self.registry,
            online_store=self.online,
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
        )


_FEAST_IMPORT = threading.Lock()


def import_feast():
    """Import feast without typeguard's instrumentation of its classes.

    feast decorates its definition classes with typeguard's ``@typechecked``, which re-parses the
    class's module for every method it instruments: 3.6 s of each process that imports feast on a
    2-core EPYC (4.6 s against 1.0 s, torch and pandas already loaded), so a CLI command that
    touches a tenant's features spent more time there than at work. The checks validate the
    arguments of those classes' methods (constructors, proto conversions), which Datacreek calls
    with its fixed definitions (feature_repo/features.py) and the registry feast itself wrote; so
    they are skipped while feast's package loads, and typeguard is left as it was found."""
    with _FEAST_IMPORT:  # two threads patching at once could leave the pass-through in place
        if "feast" in sys.modules:  # loaded already (instrumented or not): patching now changes nothing
            return sys.modules["feast"]
        import typeguard

        checked = typeguard.typechecked
        typeguard.typechecked = _unchecked
        try:
            import feast
        finally:
            typeguard.typechecked = checked
        return feast


def _unchecked(target=None, **_settings):
    """``typeguard.typechecked``'s two call forms, returning the target as it is."""
    return (lambda decorated: decorated) if target is None else target


_applied: dict[str, object] = {}
FEATURE_VIEWS = ("chunk_embeddings", "chunk_topology")  # every view a tenant's rows live in


def open_feature_store(settings: FeatureStoreSettings):
    """A FeatureStore with Datacreek's definitions applied (once per process and registry)."""
    import_feast()
    from feast import FeatureStore

    from datacreek_assets.quiet import quiet_third_party
    from feature_repo.features import definitions

    quiet_third_party()  # importing feast turned every DeprecationWarning on: the filters go back in front
    if not settings.offline_dir.startswith("s3://"):
        for view in FEATURE_VIEWS:
            Path(settings.offline_dir, view).mkdir(parents=True, exist_ok=True)
        Path(settings.registry).parent.mkdir(parents=True, exist_ok=True)
    key = repr(settings)
    if key not in _applied:
        store = FeatureStore(config=settings.repo_config(), repo_path=str(Path(__file__).resolve().parents[2] / "feature_repo"))
        try:
            store.apply(definitions(settings.offline_dir, settings.s3_endpoint or None))
        except Exception as err:
            # A tenant's pods may read the shared registry but not write it (its S3 policy): they
            # use the definitions the platform applied. Anything else, or a registry without
            # them, is an error.
            views = {view.name for view in store.list_feature_views()} if "AccessDenied" in str(err) else set()
            if not set(FEATURE_VIEWS) <= views:
                raise
        _applied[key] = store
    return _applied[key]


_online_views: dict[tuple[str, str], object] = {}


def _online_view(store, settings: FeatureStoreSettings, view: str):
    """The feature view for online reads, parsed from the registry once per process (about 1 ms a
    parse, five times the read itself). The views are Datacreek's code, so a process's copy
    cannot go stale."""
    key = (repr(settings), view)
    if key not in _online_views:
        _online_views[key] = store.get_feature_view(view)
    return _online_views[key]


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
        """The tenant's folder of offline files for this view."""
        return f"{self.settings.offline_dir.rstrip('/')}/{self.view}/{self.tenant_id}"

    @property
    def _legacy_path(self) -> str:
        # before per-write files, a tenant's rows were one file beside the folder; still read, compacted away
        return f"{self.offline_path}.parquet"

    def offline_files(self) -> list[str]:
        """The tenant's offline parquet files, oldest first (names start with the write's UTC time)."""
        from pyarrow import fs

        filesystem, folder = self.settings.filesystem(self.offline_path)
        found = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
        parts = sorted(info.path for info in found
                       if info.type == fs.FileType.File and info.base_name.endswith(".parquet")
                       and not info.base_name.startswith("."))
        _, legacy = self.settings.filesystem(self._legacy_path)
        if filesystem.get_file_info(legacy).type == fs.FileType.File:
            parts.insert(0, legacy)
        return parts

    def _read(self, files: list[str]):
        import pandas as pd

        if not files:
            return pd.DataFrame(columns=["tenant_id", "embedding_hash", "deleted", "chunk_id", "doc_id",
                                         "event_timestamp"])
        filesystem, _ = self.settings.filesystem(self.offline_path)
        frames = [pd.read_parquet(path, filesystem=filesystem) for path in files]
        rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        # the newest row of each hash wins; among equal times, the later file (stable sort)
        rows = rows.sort_values("event_timestamp", kind="stable")
        return rows.drop_duplicates("embedding_hash", keep="last").reset_index(drop=True)

    def stored_rows(self):
        """The tenant's offline rows, the newest per hash (an empty frame before the first write)."""
        for _ in range(5):
            try:
                return self._read(self.offline_files())
            except FileNotFoundError:  # a compaction folded a listed file away meanwhile: list again
                continue
        return self._read(self.offline_files())

    def tombstones(self, rows):
        """Rows marking features deleted; the feature values themselves are not kept."""
        empty = {"vector_fp8": b"", "scale": 0.0} if self.view == "chunk_embeddings" else {"doc_signature": b""}
        return rows[["embedding_hash", "chunk_id", "doc_id"]].assign(**empty, deleted=True)

    def write(self, rows) -> int:
        """Upsert rows (embedding_hash, vector_fp8, scale, deleted, chunk_id, doc_id) offline and online."""
        if rows.empty:
            return 0
        rows = rows.copy()
        rows["tenant_id"] = self.tenant_id
        now = datetime.now(timezone.utc)
        rows["event_timestamp"] = now
        # Online first: the offline files are what the next run diffs against, so they must
        # never claim rows the online store did not get.
        self.store.write_to_online_store(self.view, rows)
        _write_parquet_atomically(rows, *self.settings.filesystem(self._new_file(now)))
        for h in rows["embedding_hash"]:
            self._cache.pop(h, None)
        if len(self.offline_files()) > COMPACT_AT:
            try:
                self.compact()
            except Exception as err:  # noqa: BLE001 - the write is done; the next write compacts again
                log.warning("feature store: compaction of %s failed (%s); the files stay as they are",
                            self.offline_path, err)
        return len(rows)

    def _new_file(self, at: datetime, kind: str = "write") -> str:
        return f"{self.offline_path}/{at:%Y%m%dT%H%M%S%fZ}-{kind}-{uuid.uuid4().hex[:12]}.parquet"

    def compact(self) -> int:
        """Fold the offline files into one holding each hash's newest row; returns how many were folded.

        Only the files read are deleted, after the folded one is written: a write that lands
        meanwhile keeps its file, and a crash in between leaves duplicates that reads resolve."""
        files = self.offline_files()
        if len(files) < 2:
            return 0
        try:
            rows = self._read(files)
        except FileNotFoundError:  # another compaction is folding them: leave it to that one
            return 0
        newest = rows["event_timestamp"].max()
        filesystem, _ = self.settings.filesystem(self.offline_path)
        _write_parquet_atomically(rows, filesystem, self.settings.filesystem(self._new_file(newest, "compact"))[1])
        for path in files:
            try:
                filesystem.delete_file(path)
            except FileNotFoundError:  # a compaction running alongside folded it first
                pass
        return len(files)

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

    def holds_value(self, rows):
        """Per row: does it keep a feature value (a live row, or one hidden by a soft delete)?"""
        return rows[self.value_column].map(lambda v: isinstance(v, bytes | bytearray) and len(v) > 0)

    def hidden_hashes(self) -> set[str]:
        """Hashes soft-deleted with their values kept: only undo (or the purge) changes them."""
        rows = self.stored_rows()
        return set(rows.loc[rows["deleted"].astype(bool) & self.holds_value(rows), "embedding_hash"]) if len(rows) else set()

    def _document_rows(self, doc_id: str):
        rows = self.stored_rows()
        return rows[rows["doc_id"] == doc_id] if len(rows) else rows

    def hide_document(self, doc_id: str) -> int:
        """Soft delete: the document's live rows are marked deleted now (online lookups return nothing
        from this write on) and keep their values, so ``restore_document`` can bring them back."""
        mine = self._document_rows(doc_id)
        live = mine[~mine["deleted"].astype(bool)] if len(mine) else mine
        if len(live):
            self.write(live.drop(columns=["tenant_id", "event_timestamp"], errors="ignore").assign(deleted=True))
        return len(live)

    def restore_document(self, doc_id: str) -> int:
        """Undo: rows hidden with their values are live again at once; returns how many."""
        mine = self._document_rows(doc_id)
        hidden = mine[mine["deleted"].astype(bool) & self.holds_value(mine)] if len(mine) else mine
        if len(hidden):
            self.write(hidden.drop(columns=["tenant_id", "event_timestamp"], errors="ignore").assign(deleted=False))
        return len(hidden)

    @property
    def value_column(self) -> str:
        return "vector_fp8" if self.view == "chunk_embeddings" else "doc_signature"

    def erase_document(self, doc_id: str) -> int:
        """Purge: every row of the document, hidden or live, becomes a tombstone without values, and
        the offline files are folded, so no file keeps an older row with its values (a tombstone
        holds the hash, chunk and document ids only)."""
        mine = self._document_rows(doc_id)
        holding = mine[self.holds_value(mine) | ~mine["deleted"].astype(bool)] if len(mine) else mine
        if len(holding):
            self.write(self.tombstones(holding))
        self.compact()
        return len(mine)

    def drop_all(self) -> int:
        """Tenant removal: every row holding a value online (live, or hidden by a soft delete) becomes
        a tombstone, then the offline files are deleted; returns the live rows dropped."""
        rows = self.stored_rows()
        holding = rows[self.holds_value(rows) | ~rows["deleted"].astype(bool)] if len(rows) else rows
        if len(holding):
            self.write(self.tombstones(holding))
        live = rows[~rows["deleted"].astype(bool)] if len(rows) else rows
        filesystem, _ = self.settings.filesystem(self.offline_path)
        for path in self.offline_files():
            try:
                filesystem.delete_file(path)
            except FileNotFoundError:  # a compaction folded it meanwhile
                pass
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
            else:
                missing.append(h)
        if len(missing) < len(hashes):
            self.metrics.hits.labels(tenant=self.tenant_id).inc(len(hashes) - len(missing))
        if missing:
            self.misses += len(missing)
            self.metrics.misses.labels(tenant=self.tenant_id).inc(len(missing))
            rows = self.online_rows(missing, ["vector_fp8", "scale"])
            found = [i for i, row in enumerate(rows) if row is not None and row["vector_fp8"]]
            vectors = dequantize([rows[i]["vector_fp8"] for i in found], [rows[i]["scale"] for i in found]) if found else []
            by_index = {i: vector.copy() for i, vector in zip(found, vectors)}  # a cached row keeps no batch alive
            for i, h in enumerate(missing):
                result[h] = self._cache[h] = by_index.get(i)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return result

    def online_rows(self, hashes: list[str], features: list[str]) -> list[dict | None]:
        """Raw online feature values of this view for the tenant's hashes (None: unknown or deleted).

        Reads through the online store's own interface (Feast's ``OnlineStore.online_read``, the
        call ``get_online_features`` ends in, on the provider's own connection), not
        ``get_online_features``: the same rows without its per-call request planning and response
        protos, half of a one-key lookup's time (bench/embeddings.py). The views never expire
        (ttl 0), so no TTL filter is skipped."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        view = _online_view(self.store, self.settings, self.view)
        tenant = Value(string_val=self.tenant_id)
        keys = [EntityKey(join_keys=["tenant_id", "embedding_hash"], entity_values=[tenant, Value(string_val=h)])
                for h in hashes]
        requested = [*features, "deleted"]
        rows: list[dict | None] = []
        for _, values in self.store.provider.online_store.online_read(self.store.config, view, keys, requested):
            row = {name: feast_value_type_to_python_type(values[name]) if values and name in values else None
                   for name in requested}
            rows.append(None if row["deleted"] is None or row["deleted"] else {name: row[name] for name in features})
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"  # dot files are ignored by parquet readers
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(target)
