"""Model files in the object store, named by their SHA-256, and a replica's local cache of them.

A release names its GGUF files by object-store key and digest (`ModelRef`), never by a local path:
a replica on any node fetches what it lacks into its cache, checks the digest and refuses a
mismatch, so a file changed in the bucket or on the node's disk is never served.

Keys are content-addressed. The shared base models live under ``models/base/<sha256>.gguf``, outside
every tenant's prefix. A tenant's adapters live under ``tenants/<id>/models/adapters/<sha256>.gguf``.
Nothing ever overwrites a published object, and publishing the same file again uploads nothing.
A replica fetching for a tenant may read the shared bases and that tenant's own prefix, nothing
else, whatever key a ref names.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from datacreek_assets.object_store import ObjectStore, TenantObjectStore, check_relative_key
from datacreek_assets.tenancy import validate_tenant_id

BASE_PREFIX = "models/base"
ADAPTER_FOLDER = "models/adapters"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 1 << 20


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
        except (KeyError, TypeError) as err:
            raise ModelFileError(f"not a model reference: {value!r}") from err


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _publish(store: ObjectStore, key: str, path: Path, digest: str) -> ModelRef:
    size = Path(path).stat().st_size
    if not (store.exists(key) and store.size(key) == size):  # the same key holds the same bytes
        store.put_file(key, Path(path))
    return ModelRef(key, digest, size)


def publish_base(store: ObjectStore, path: Path) -> ModelRef:
    """A base model file, shared by every tenant's adapters."""
    digest = file_sha256(path)
    return _publish(store, f"{BASE_PREFIX}/{digest}.gguf", path, digest)


def publish_adapter(store: ObjectStore, tenant_id: str, path: Path) -> ModelRef:
    """A tenant's adapter file, under the tenant's own prefix."""
    digest = file_sha256(path)
    return _publish(store, TenantObjectStore(store, tenant_id).key(f"{ADAPTER_FOLDER}/{digest}.gguf"), path, digest)


def readable_by(ref: ModelRef, tenant_id: str) -> bool:
    """A shared base, or a file under the tenant's own prefix."""
    tenant_prefix = TenantObjectStore.AREAS["tenant"].format(id=validate_tenant_id(tenant_id)) + "/"
    return ref.key.startswith(BASE_PREFIX + "/") or ref.key.startswith(tenant_prefix)


class ModelCache:
    """A node's local copies of model files, one file per digest, least recently used evicted first
    once they pass ``max_bytes`` (0: no limit). Replicas on one node may share the folder: a file
    appears there by rename, whole and checked, or not at all."""

    def __init__(self, store: ObjectStore, folder: Path, max_bytes: int = 0):
        self.store, self.folder, self.max_bytes = store, Path(folder), max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.verified: set[str] = set()  # digests this process has checked on disk
        self.lock = threading.Lock()

    def path_of(self, ref: ModelRef) -> Path:
        return self.folder / f"{ref.sha256}.gguf"

    def fetch(self, ref: ModelRef, tenant_id: str) -> Path:
        """The file's local path, fetched and checked first if needed. A cached copy is checked
        again once per process (a file changed on the node's disk is fetched anew)."""
        if not readable_by(ref, tenant_id):
            raise ModelFileError(f"tenant {tenant_id!r} may not read model file {ref.key!r}")
        path = self.path_of(ref)
        with self.lock:
            if path.exists() and path.stat().st_size == ref.size and (
                    ref.sha256 in self.verified or file_sha256(path) == ref.sha256):
                self.verified.add(ref.sha256)
                os.utime(path)  # most recently used
                return path
            self._download(ref, path)
            self.verified.add(ref.sha256)
            self._evict(keep=path)
        return path

    def _download(self, ref: ModelRef, path: Path) -> None:
        part = self.folder / f".part-{ref.sha256}-{os.getpid()}-{threading.get_ident()}"
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

    def _evict(self, keep: Path) -> list[Path]:
        if not self.max_bytes:
            return []
        files = sorted((p for p in self.folder.glob("*.gguf") if p != keep), key=lambda p: p.stat().st_mtime)
        total = keep.stat().st_size + sum(p.stat().st_size for p in files)
        evicted = []
        for old in files:
            if total <= self.max_bytes:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)
            self.verified.discard(old.stem)
            evicted.append(old)
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
