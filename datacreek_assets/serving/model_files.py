"""Model files in the object store, named by their SHA-256, and a replica's local cache of them.

A release names its GGUF files by object-store key and digest (`ModelRef`), never by a local path:
a replica on any node fetches what it lacks into its cache, checks the digest and refuses a
mismatch, so a file changed in the bucket or on the node's disk is never served.

Keys are content-addressed and canonical: a shared base model is ``models/base/<sha256>.gguf``,
outside every tenant's prefix; a tenant's adapter is ``tenants/<id>/models/adapters/<sha256>.gguf``.
A replica fetching for a tenant accepts only those two keys for a digest, so no ref, whatever it
names, reaches another tenant's adapter, in the bucket or in the cache (which mirrors the keys:
adapters sit in per-tenant folders, only bases are shared). Publishing a file whose stored copy
already has its digest uploads nothing; a stored copy with other bytes is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from datacreek_assets.object_store import ObjectStore, TenantObjectStore, check_relative_key, file_sha256
from datacreek_assets.tenancy import validate_tenant_id

BASE_PREFIX = "models/base"
ADAPTER_FOLDER = "models/adapters"
STAGED_BASE_FOLDER = "models/bases"  # a base a tenant's release step uploads, for the platform to admit
_SHA256 = re.compile(r"[0-9a-f]{64}")
TOUCH_EVERY_S = 300.0  # a running replica marks its files in use this often (AdapterServer.check_health)
SWEEP_EVERY_S = 3600.0  # and sweeps its node's cache this often, also when no replica starts there
MIN_IDLE_S = 900.0  # a file used this recently is never evicted: a replica runs on it, or is about to open it
MAX_IDLE_S = 7 * 24 * 3600.0  # unused this long, a file goes whatever the budget (erasure: within 30 days)
STALE_PART_S = 3600.0  # a download this old was cut off (a killed replica): its part file goes


class ModelFileError(RuntimeError):
    pass


class ModelDigestMismatch(ModelFileError):
    pass


@dataclass(frozen=True)
class ModelRef:
    """One model file: its object-store key, the SHA-256 of its bytes and their count."""

    key: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        check_relative_key(self.key)
        if not _SHA256.fullmatch(self.sha256):
            raise ModelFileError(f"{self.sha256!r} is not a lowercase hex SHA-256")
        if type(self.size) is not int or self.size < 0:
            raise ModelFileError(f"size {self.size!r} is not a byte count")

    def as_dict(self) -> dict:
        return {"key": self.key, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, value: dict) -> "ModelRef":
        try:
            return cls(str(value["key"]), str(value["sha256"]), value["size"])
        except (KeyError, TypeError, ValueError) as err:  # ValueError: a key that is no object key
            raise ModelFileError(f"not a model reference: {value!r}") from err


def base_key(sha256: str) -> str:
    return f"{BASE_PREFIX}/{sha256}.gguf"


def _tenant_key(tenant_id: str, folder: str, sha256: str) -> str:
    return TenantObjectStore.AREAS["tenant"].format(id=validate_tenant_id(tenant_id)) + f"/{folder}/{sha256}.gguf"


def adapter_key(tenant_id: str, sha256: str) -> str:
    return _tenant_key(tenant_id, ADAPTER_FOLDER, sha256)


def _publish(store: ObjectStore, key: str, path: Path, digest: str) -> ModelRef:
    if store.stored_sha256(key) != digest:  # absent, or other bytes under the name: (re)written
        store.put_file(key, Path(path), sha256=digest)
    return ModelRef(key, digest, Path(path).stat().st_size)


def publish_base(store: ObjectStore, path: Path) -> ModelRef:
    """A base model file, shared by every tenant's adapters."""
    digest = file_sha256(path)
    return _publish(store, base_key(digest), path, digest)


def publish_adapter(store: ObjectStore, tenant_id: str, path: Path) -> ModelRef:
    """A tenant's adapter file, under the tenant's own prefix."""
    digest = file_sha256(path)
    return _publish(store, adapter_key(tenant_id, digest), path, digest)


def staged_base_key(tenant_id: str, sha256: str) -> str:
    """Where a tenant's release step uploads a base model file: under its own prefix (its
    credentials write nothing shared); the platform copies it to ``base_key`` (`admit_base`)."""
    return _tenant_key(tenant_id, STAGED_BASE_FOLDER, sha256)


def stage_base(store: ObjectStore, tenant_id: str, path: Path) -> ModelRef:
    digest = file_sha256(path)
    return _publish(store, staged_base_key(tenant_id, digest), path, digest)


def admit_base(store: ObjectStore, ref: ModelRef, tenant_id: str, work_dir: Path, max_bytes: int) -> ModelRef:
    """The shared base ``ref`` names, as the platform admits it from a tenant: one already at
    ``base_key`` (only the platform writes there) is used as it is; one the tenant staged under
    its own prefix (at most ``max_bytes``) is downloaded, hashed and copied there only if its
    bytes have the digest named (every tenant whose file has that digest shares it, so it must
    be exactly those bytes), and the staged copy deleted. Anything else is refused."""
    shared = base_key(ref.sha256)
    if store.stored_sha256(shared) == ref.sha256:
        return ModelRef(shared, ref.sha256, store.size(shared))
    if ref.key != staged_base_key(tenant_id, ref.sha256):
        raise ModelFileError(f"base model file {ref.key!r} is neither published nor staged by tenant {tenant_id!r}")
    if not store.exists(ref.key):
        raise ModelFileError(f"base model file {ref.key!r} is not in the object store")
    if (size := store.size(ref.key)) > max_bytes:
        raise ModelFileError(f"staged base {ref.key!r} has {size} bytes, over the {max_bytes} admitted")
    work_dir.mkdir(parents=True, exist_ok=True)
    part = work_dir / f"{ref.sha256}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        try:
            store.get_file(ref.key, part)
        except FileNotFoundError:
            if store.stored_sha256(shared) == ref.sha256:  # another admission of it just finished
                return ModelRef(shared, ref.sha256, store.size(shared))
            raise ModelFileError(f"base model file {ref.key!r} is not in the object store") from None
        digest = file_sha256(part)
        if digest != ref.sha256:
            raise ModelDigestMismatch(f"staged base {ref.key!r} has SHA-256 {digest}, not the {ref.sha256} "
                                      "its name says: not admitted")
        store.put_file(shared, part, sha256=digest)
        store.delete(ref.key)  # admitted: one copy is enough
        return ModelRef(shared, digest, part.stat().st_size)
    finally:
        part.unlink(missing_ok=True)


def readable_by(ref: ModelRef, tenant_id: str) -> bool:
    """The shared base of that digest, or the tenant's own adapter of that digest: nothing else."""
    return ref.key in (base_key(ref.sha256), adapter_key(tenant_id, ref.sha256))


class ModelCache:
    """A node's local copies of model files, at their keys under ``folder``; least recently used
    evicted first once they pass ``max_bytes`` (0: no limit), and any unused for MAX_IDLE_S.
    Replicas on one node share the folder: a lock file serialises their fetches (the second of
    two replicas starting together finds the first one's download), and a file appears by
    rename, whole and checked, or not at all."""

    def __init__(self, store: ObjectStore, folder: Path, max_bytes: int = 0):
        self.store, self.folder, self.max_bytes = store, Path(folder), max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.verified: set[Path] = set()  # files this process has checked on disk
        self.lock = threading.Lock()

    def touch(self, paths: list[Path]) -> None:
        """Mark files in use (a running replica's): they are not idle, so never evicted."""
        for path in paths:
            try:
                os.utime(path)
            except FileNotFoundError:
                continue

    def sweep(self) -> list[Path]:
        """Evict what is idle or over budget now, without fetching anything."""
        with self._exclusive():
            return self._evict(keep=set())

    def path_of(self, ref: ModelRef) -> Path:
        return self.folder / check_relative_key(ref.key)

    def fetch(self, ref: ModelRef, tenant_id: str) -> Path:
        return self.fetch_all([ref], tenant_id)[0]

    def fetch_base(self, ref: ModelRef) -> Path:
        """A shared base model's file (a base pool serves every tenant): its key must be the base's."""
        if ref.key != base_key(ref.sha256):
            raise ModelFileError(f"model file {ref.key!r} is not a shared base model")
        return self._fetch([ref])[0]

    def fetch_all(self, refs: list[ModelRef], tenant_id: str) -> list[Path]:
        """The files' local paths, each fetched and checked first if needed. A cached copy is
        checked again once per process (a file changed on the node's disk is fetched anew)."""
        for ref in refs:
            if not readable_by(ref, tenant_id):
                raise ModelFileError(f"tenant {tenant_id!r} may not read model file {ref.key!r}")
        return self._fetch(refs)

    def _fetch(self, refs: list[ModelRef]) -> list[Path]:
        paths = []
        with self._exclusive():
            for ref in refs:
                path = self.path_of(ref)
                if not self._cached(ref, path):
                    self._download(ref, path)
                self.verified.add(path)
                paths.append(path)
            self.touch(paths)  # most recently used
            self._evict(keep=set(paths))
        return paths

    @contextlib.contextmanager
    def _exclusive(self):
        with self.lock, open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _cached(self, ref: ModelRef, path: Path) -> bool:
        try:
            return path.stat().st_size == ref.size and (path in self.verified or file_sha256(path) == ref.sha256)
        except FileNotFoundError:
            return False

    def _download(self, ref: ModelRef, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".part-{path.name}-{os.getpid()}-{threading.get_ident()}")
        try:
            try:
                self.store.get_file(ref.key, part)
            except FileNotFoundError:
                raise ModelFileError(f"model file {ref.key!r} is not in the object store") from None
            size, digest = part.stat().st_size, file_sha256(part)
            if (size, digest) != (ref.size, ref.sha256):
                raise ModelDigestMismatch(f"model file {ref.key!r} has SHA-256 {digest} ({size} bytes), the "
                                          f"release names {ref.sha256} ({ref.size} bytes): refused")
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)

    def _evict(self, keep: set[Path]) -> list[Path]:
        now = time.time()
        files = []
        for item in self.folder.rglob("*"):
            try:
                stat = item.stat()
            except FileNotFoundError:
                continue
            if not item.is_file():
                continue
            if item.name.startswith(".part-"):
                if now - stat.st_mtime > STALE_PART_S:
                    item.unlink(missing_ok=True)
            elif item.suffix == ".gguf":
                files.append((stat.st_mtime, stat.st_size, item))
        files.sort()
        total = sum(size for _, size, _ in files)
        evicted = []
        for mtime, size, item in files:
            idle = now - mtime
            over = self.max_bytes and total > self.max_bytes
            if item in keep or idle < MIN_IDLE_S or not (over or idle > MAX_IDLE_S):
                continue
            item.unlink(missing_ok=True)
            self.verified.discard(item)
            total -= size
            evicted.append(item)
        return evicted


@dataclass(frozen=True)
class ModelSource:
    """Where a replica fetches model files and keeps its cache, in plain values that a Ray actor
    can be given and rebuild its store from. S3 credentials are not here: boto3 reads them where
    the replica runs (its environment, the pod's web identity)."""

    backend: str  # "local" (a directory) or "s3"
    cache_dir: str
    root: str = ""  # local
    bucket: str = ""  # s3
    endpoint_url: str = ""
    region: str = ""
    cache_max_bytes: int = 0

    def __post_init__(self) -> None:
        if self.backend not in ("local", "s3"):
            raise ModelFileError(f"model files come from a 'local' or 's3' store, not {self.backend!r}")
        if not self.cache_dir:
            raise ModelFileError("the model cache needs a folder")
        if self.backend == "local" and not self.root:
            raise ModelFileError("the local model store needs a root folder")
        if self.backend == "s3" and not self.bucket:
            raise ModelFileError("the s3 model store needs a bucket")

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def store(self) -> ObjectStore:
        from datacreek_assets.object_store import LocalObjectStore, S3ObjectStore

        if self.backend == "local":
            return LocalObjectStore(self.root)
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint_url or None, region_name=self.region or None)
        return S3ObjectStore(self.bucket, client)

    def cache(self) -> ModelCache:
        return ModelCache(self.store(), Path(self.cache_dir), self.cache_max_bytes)
