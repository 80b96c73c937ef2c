"""Object storage: a local directory or S3, always addressed through a tenant scope.

Keys under a tenant are ``tenants/<id>/...`` (and ``ingest-toxic/<id>/...`` for
screened-out items). Tenant ids are never parsed out of keys: callers name the
tenant, and the scope refuses keys that try to leave it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterator, Protocol

from datacreek_assets.tenancy import validate_tenant_id


class InvalidObjectKey(ValueError):
    pass


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_DISGUISING = {"\u200b", "\u200e", "\u200f", "\u2060", "\ufeff", *map(chr, range(0x202A, 0x202F)),
               *map(chr, range(0x2066, 0x206A))}


def check_relative_key(key: str) -> str:
    path = PurePosixPath(key)
    if not key or key.startswith("/") or "\\" in key or any(p in ("..", ".", "") for p in key.split("/")):
        raise InvalidObjectKey(f"object key {key!r} must be a relative path without '.', '..' or empty parts")
    # NUL, newlines and other controls break logs and tools; bidirectional marks and overrides
    # (U+202E...) and invisible spaces make a name read as another one. Other characters are names,
    # 4-byte ones and the joiners of Persian words and emoji sequences (U+200C, U+200D) included.
    if any(unicodedata.category(ch) in ("Cc", "Cs") or ch in _DISGUISING for ch in key):
        raise InvalidObjectKey(f"object key {key!r} holds a control, bidirectional or invisible character")
    return str(path)


@dataclass(frozen=True)
class StoredVersion:
    """One stored copy of an object: the current one or, in a versioned bucket, an older one or a
    delete marker. ``version_id`` is None where the store keeps no versions."""

    key: str
    modified: datetime
    version_id: str | None = None
    latest: bool = True
    delete_marker: bool = False


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def stored_sha256(self, key: str) -> str | None: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def versions(self, prefix: str) -> Iterator[StoredVersion]: ...
    def delete_version(self, version: StoredVersion) -> None: ...


class LocalObjectStore:
    """A directory tree standing in for a bucket (the local profile's store)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_relative_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a crash never leaves a half-written object behind.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        """A file's bytes as the object, copied in chunks (a model file is not read whole).
        (``sha256`` is not kept: ``stored_sha256`` hashes the file itself.)"""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_file(self, key: str, path: Path) -> None:
        """The object's bytes into ``path`` (which the caller renames into place once checked)."""
        shutil.copyfile(self._path(key), path)

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 of the stored bytes, or None when there is no such object."""
        try:
            return file_sha256(self._path(key))
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                yield path.relative_to(self.root).as_posix()

    def versions(self, prefix: str) -> Iterator[StoredVersion]:
        """Every file under ``prefix`` with its modification time (a directory keeps one version)."""
        for key in self.list(prefix):
            try:
                mtime = self._path(key).stat().st_mtime
            except FileNotFoundError:  # deleted since listed
                continue
            yield StoredVersion(key, datetime.fromtimestamp(mtime, timezone.utc))

    def delete_version(self, version: StoredVersion) -> None:
        self.delete(version.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # prune empty directories up to the root
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break


class S3ObjectStore:
    """An S3 bucket (prod; moto's server in tests), through a boto3 client that dagster-aws's
    ``S3Resource`` made (endpoint, region, credentials and profile are that resource's config)."""

    def __init__(self, bucket: str, client):
        self.bucket = bucket
        self.client = client

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=check_relative_key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=check_relative_key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None

    def put_file(self, key: str, path: Path, sha256: str | None = None) -> None:
        """A file as the object, through boto3's managed transfer (multipart for large files),
        with its SHA-256 as the object's metadata when given (S3's own checksum of a multipart
        upload is a checksum of checksums, not the file's)."""
        extra = {"Metadata": {"sha256": sha256}} if sha256 else None
        self.client.upload_file(str(path), self.bucket, check_relative_key(key), ExtraArgs=extra)

    def get_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.download_file(self.bucket, check_relative_key(key), str(path))
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 recorded with the object by ``put_file``; None when there is no such object or
        it was written without one (by anything else: what it holds is not vouched for)."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=check_relative_key(key))
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head.get("Metadata", {}).get("sha256")

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=check_relative_key(key))
            return True
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=check_relative_key(key))["ContentLength"])

    def list(self, prefix: str) -> Iterator[str]:
        prefix = check_relative_key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=check_relative_key(key))

    def versions(self, prefix: str) -> Iterator[StoredVersion]:
        """Every version and delete marker under ``prefix`` (paged). An unversioned bucket answers
        with one version per object ("null"), so one listing serves both kinds of bucket: in a
        versioned one, a deleted object's older versions still hold its bytes."""
        prefix = check_relative_key(prefix.rstrip("/")) + "/"
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Versions", []):
                yield StoredVersion(item["Key"], item["LastModified"], item.get("VersionId"), item.get("IsLatest", True))
            for item in page.get("DeleteMarkers", []):
                yield StoredVersion(item["Key"], item["LastModified"], item.get("VersionId"),
                                    item.get("IsLatest", True), delete_marker=True)

    def delete_version(self, version: StoredVersion) -> None:
        """Remove that one copy for good (a plain delete in a versioned bucket only adds a marker).
        The key is the listing's, as S3 spells it: a folder marker ("x/") or "a//b" is still an object
        the listing found, and S3 gives no path meaning to "..", so it is deleted as listed."""
        key = version.key
        if version.version_id is None:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        else:  # "null" names the copy written while versioning was off
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version.version_id)


class TenantObjectStore:
    """One tenant's view of an object store. Every key is relative to its scope."""

    AREAS = {"tenant": "tenants/{id}", "toxic": "ingest-toxic/{id}"}

    def __init__(self, store: ObjectStore, tenant_id: str):
        self.store = store
        self.tenant_id = validate_tenant_id(tenant_id)

    def _prefix(self, area: str) -> str:
        return self.AREAS[area].format(id=self.tenant_id)

    def key(self, relative: str, area: str = "tenant") -> str:
        return f"{self._prefix(area)}/{check_relative_key(relative)}"

    def put(self, relative: str, data: bytes, area: str = "tenant") -> str:
        key = self.key(relative, area)
        self.store.put(key, data)
        return key

    def get(self, relative: str, area: str = "tenant") -> bytes:
        return self.store.get(self.key(relative, area))

    def exists(self, relative: str, area: str = "tenant") -> bool:
        return self.store.exists(self.key(relative, area))

    def size(self, relative: str, area: str = "tenant") -> int:
        return self.store.size(self.key(relative, area))

    def list(self, relative_prefix: str = "", area: str = "tenant") -> list[str]:
        """Keys relative to the scope, e.g. ``inbox/a.txt``."""
        base = self._prefix(area)
        prefix = f"{base}/{check_relative_key(relative_prefix)}" if relative_prefix else base
        return [key[len(base) + 1 :] for key in self.store.list(prefix) if key.startswith(base + "/")]

    def delete(self, relative: str, area: str = "tenant") -> None:
        self.store.delete(self.key(relative, area))

    def versions(self, area: str = "tenant", folder: str = "") -> list[StoredVersion]:
        """Every stored copy in one area (or one folder of it), keys relative to the scope."""
        base = self._prefix(area)
        listed = f"{base}/{check_relative_key(folder)}" if folder else base
        return [StoredVersion(v.key[len(base) + 1:], v.modified, v.version_id, v.latest, v.delete_marker)
                for v in self.store.versions(listed) if v.key.startswith(base + "/")]

    def delete_version(self, version: StoredVersion, area: str = "tenant") -> None:
        """A copy that ``versions`` listed (its key relative to the scope, possibly one no put would
        accept, such as a folder marker): deleted under this tenant's prefix, never outside it."""
        if version.key.startswith("/") or not version.key:
            raise InvalidObjectKey(f"object key {version.key!r} is not relative to the scope")
        self.store.delete_version(StoredVersion(f"{self._prefix(area)}/{version.key}", version.modified,
                                                version.version_id, version.latest, version.delete_marker))

    def delete_all(self) -> int:
        count = 0
        for area in self.AREAS:
            for rel in self.list(area=area):
                self.delete(rel, area=area)
                count += 1
        return count

    # JSON helpers: the hand-off format between assets.
    def put_json(self, relative: str, value, area: str = "tenant") -> str:
        import json

        return self.put(relative, json.dumps(value, sort_keys=True).encode(), area)

    def get_json(self, relative: str, area: str = "tenant"):
        import json

        return json.loads(self.get(relative, area))

    def put_jsonl(self, relative: str, rows: list[dict]) -> str:
        import json

        return self.put(relative, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

    def get_jsonl(self, relative: str) -> list[dict]:
        import json

        return [json.loads(line) for line in self.get(relative).decode().splitlines() if line]
