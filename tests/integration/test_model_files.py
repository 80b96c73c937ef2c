"""Model files from the object store: published by digest, fetched into a node's cache, checked,
refused on a mismatch, never across tenants. On the local directory store and on moto's S3 server."""

from __future__ import annotations

import os

import pytest

from datacreek_assets.object_store import InvalidObjectKey, LocalObjectStore, S3ObjectStore
from datacreek_assets.serving.model_files import (
    ModelCache, ModelDigestMismatch, ModelFileError, ModelRef, publish_adapter, publish_base,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalObjectStore(tmp_path / "bucket")
    s3_resource = request.getfixturevalue("s3_resource")
    bucket = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(bucket, s3_resource.get_client())


def model_file(folder, name: str, size: int, seed: int):
    path = folder / name
    path.write_bytes(bytes((seed * 31 + i * 7) % 251 for i in range(size)))
    return path


def cached(folder) -> list[str]:
    """Every file in a cache folder but its lock: models and any part files."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


def test_published_files_are_fetched_checked_and_shared_from_the_cache(store, tmp_path):
    base = model_file(tmp_path, "base.gguf", 3 << 20, 1)  # more than one read chunk
    adapter = model_file(tmp_path, "adapter.gguf", 9000, 2)
    base_ref, adapter_ref = publish_base(store, base), publish_adapter(store, "acme", adapter)
    assert base_ref.key == f"models/base/{base_ref.sha256}.gguf" and base_ref.size == 3 << 20
    assert adapter_ref.key == f"tenants/acme/models/adapters/{adapter_ref.sha256}.gguf"
    assert publish_base(store, base) == base_ref  # the same bytes again: the same reference

    cache = ModelCache(store, tmp_path / "cache")
    assert cache.fetch(base_ref, "acme").read_bytes() == base.read_bytes()
    assert cache.fetch(adapter_ref, "acme").read_bytes() == adapter.read_bytes()
    assert cache.fetch(base_ref, "globex") == cache.path_of(base_ref)  # one copy of a base for every tenant

    # a cached file is served from the node's disk: another replica's cache over the same folder
    # finds it even once the object store no longer has it
    store.delete(adapter_ref.key)
    again = ModelCache(store, tmp_path / "cache").fetch(adapter_ref, "acme")
    assert again.read_bytes() == adapter.read_bytes()
    assert cached(tmp_path / "cache") == sorted([base_ref.key, adapter_ref.key])  # no part file left


def test_a_file_changed_in_the_store_is_refused_and_leaves_nothing_in_the_cache(store, tmp_path):
    adapter = model_file(tmp_path, "adapter.gguf", 9000, 3)
    ref = publish_adapter(store, "acme", adapter)
    tampered = bytearray(adapter.read_bytes())
    tampered[4000] ^= 0xFF  # same size, one byte changed
    store.put(ref.key, bytes(tampered))

    cache = ModelCache(store, tmp_path / "cache")
    with pytest.raises(ModelDigestMismatch, match="refused"):
        cache.fetch(ref, "acme")
    assert cached(tmp_path / "cache") == []

    assert publish_adapter(store, "acme", adapter) == ref  # publishing again replaces the changed copy
    assert store.get(ref.key) == adapter.read_bytes()
    assert cache.fetch(ref, "acme").read_bytes() == adapter.read_bytes()


def test_a_file_changed_on_the_nodes_disk_is_fetched_again(store, tmp_path):
    adapter = model_file(tmp_path, "adapter.gguf", 9000, 4)
    ref = publish_adapter(store, "acme", adapter)
    path = ModelCache(store, tmp_path / "cache").fetch(ref, "acme")
    corrupted = bytearray(path.read_bytes())
    corrupted[0] ^= 0x01
    path.write_bytes(bytes(corrupted))

    assert ModelCache(store, tmp_path / "cache").fetch(ref, "acme").read_bytes() == adapter.read_bytes()


def test_a_replica_fetching_for_one_tenant_never_reads_anothers_adapter(store, tmp_path):
    theirs = publish_adapter(store, "acme", model_file(tmp_path, "a.gguf", 5000, 5))
    cache = ModelCache(store, tmp_path / "cache")
    with pytest.raises(ModelFileError, match="may not read"):
        cache.fetch(theirs, "globex")
    assert cached(tmp_path / "cache") == []
    assert cache.fetch(theirs, "acme").exists()
    # with acme's adapter in the node's cache: refs naming its digest under globex's own prefix,
    # as a base, or under any other key, still reach nothing of acme's
    sha, size = theirs.sha256, theirs.size
    for key in (f"tenants/globex/models/adapters/{sha}.gguf", f"models/base/{sha}.gguf"):
        with pytest.raises(ModelFileError, match="not in the object store"):
            ModelCache(store, tmp_path / "cache").fetch(ModelRef(key, sha, size), "globex")
    for key in (f"tenants/globex/models/{sha}.gguf", f"tenants/globex/models/adapters/{'0' * 64}.gguf"):
        with pytest.raises(ModelFileError, match="may not read"):
            cache.fetch(ModelRef(key, sha, size), "globex")
    # nor by a key that climbs out of the tenant's prefix, or a digest that is not one
    with pytest.raises(InvalidObjectKey):
        ModelRef(f"tenants/globex/../acme/models/adapters/{sha}.gguf", sha, size)
    with pytest.raises(ModelFileError, match="SHA-256"):
        ModelRef(theirs.key, "../" + sha[3:], size)
    assert cached(tmp_path / "cache") == [theirs.key]


def test_a_missing_file_is_a_clear_error(store, tmp_path):
    ref = ModelRef("tenants/acme/models/adapters/" + "0" * 64 + ".gguf", "0" * 64, 10)
    cache = ModelCache(store, tmp_path / "cache")
    with pytest.raises(ModelFileError, match="not in the object store"):
        cache.fetch(ref, "acme")
    assert cached(tmp_path / "cache") == []


def test_the_cache_evicts_idle_files_past_its_budget_and_never_one_just_used(store, tmp_path):
    import time

    from datacreek_assets.serving.model_files import MIN_IDLE_S

    refs = [publish_adapter(store, "acme", model_file(tmp_path, f"{i}.gguf", 4000, 10 + i)) for i in range(3)]
    cache = ModelCache(store, tmp_path / "cache", max_bytes=9000)  # room for two
    first, second = cache.fetch(refs[0], "acme"), cache.fetch(refs[1], "acme")
    now = time.time()
    os.utime(first, (now - MIN_IDLE_S - 200, now - MIN_IDLE_S - 200))
    os.utime(second, (now - MIN_IDLE_S - 100, now - MIN_IDLE_S - 100))
    cache.fetch(refs[0], "acme")  # used again: the most recent, and too fresh to evict
    cache.fetch(refs[2], "acme")  # over budget: the least recently used idle file goes
    assert first.exists() and not second.exists() and cache.path_of(refs[2]).exists()
    assert cache.fetch(refs[1], "acme").exists()  # fetched again when wanted again
    # over budget with every file just used: nothing is evicted (a replica may be opening it)
    assert all(cache.path_of(r).exists() for r in refs)


def test_the_cache_drops_files_unused_for_a_week_and_cut_off_downloads_but_not_files_in_use(store, tmp_path):
    import time

    from datacreek_assets.serving.model_files import MAX_IDLE_S, STALE_PART_S

    old, new = (publish_adapter(store, "acme", model_file(tmp_path, f"{i}.gguf", 3000, 20 + i)) for i in range(2))
    cache = ModelCache(store, tmp_path / "cache")  # no budget
    stale, in_use = cache.fetch(old, "acme"), cache.fetch(new, "acme")
    part = stale.with_name(".part-cut-off")
    part.write_bytes(b"half a download")
    now = time.time()
    for path, age in ((stale, MAX_IDLE_S), (in_use, MAX_IDLE_S), (part, STALE_PART_S)):
        os.utime(path, (now - age - 60, now - age - 60))
    cache.touch([in_use])  # what a running replica does from its health check
    assert cache.sweep() == [stale]
    assert cached(tmp_path / "cache") == [new.key]
