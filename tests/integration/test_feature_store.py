"""fp8 vectors through real Feast stores: SQLite online (local) and Redis online (prod setting)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from datacreek_assets.embeddings.embedder import embedding_hash
from datacreek_assets.embeddings.feature_store import FeatureStoreSettings, TenantFeatures, open_feature_store
from datacreek_assets.embeddings.fp8 import quantize
from datacreek_assets.metrics import FeatureCacheMetrics
from resources.stores import FeatureStoreResource

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def rows_for(texts, seed):
    vectors = np.random.default_rng(seed).normal(size=(len(texts), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    blobs, scales = quantize(vectors)
    frame = pd.DataFrame({
        "embedding_hash": [embedding_hash(t) for t in texts], "chunk_id": [f"c{i}" for i in range(len(texts))],
        "doc_id": ["d.txt"] * len(texts), "vector_fp8": blobs, "scale": scales, "deleted": False,
    })
    return frame, vectors


@pytest.fixture(params=["local: sqlite online", "prod: redis online, s3 offline"])
def feast_settings(request, tmp_path, services, s3_resource):
    if request.param.startswith("local"):
        return FeatureStoreSettings(registry=str(tmp_path / "registry.db"), offline_dir=str(tmp_path / "offline"),
                                    online={"type": "sqlite", "path": str(tmp_path / "online.db")})
    bucket = "feast-" + tmp_path.name.lower().replace("_", "-")[-40:].strip("-")
    s3_resource.get_client().create_bucket(Bucket=bucket)
    # the prod profile's path: the feature store resource takes its S3 settings from the S3Resource
    return FeatureStoreResource(
        registry=str(tmp_path / "registry.db"), offline_dir=f"s3://{bucket}/offline", online_type="redis",
        online_connection=f"127.0.0.1:{services.falkordb_port}", s3=s3_resource).settings()


def test_lookups_return_the_right_vectors_and_never_cross_tenants(feast_settings):
    settings = feast_settings
    store = open_feature_store(settings)
    registry = CollectorRegistry()
    metrics = FeatureCacheMetrics.for_registry(registry)
    a = TenantFeatures(store, settings, "feat-a", metrics)
    b = TenantFeatures(store, settings, "feat-b", metrics)
    texts = ["shared text", "only in a", "also in a"]
    frame_a, vectors_a = rows_for(texts, 1)
    frame_b, vectors_b = rows_for(["shared text"], 2)  # same hash as a's first row, other vector
    assert a.write(frame_a) == 3 and b.write(frame_b) == 1
    got = a.lookup(list(frame_a["embedding_hash"]))
    for i, h in enumerate(frame_a["embedding_hash"]):
        assert np.abs(got[h] - vectors_a[i]).max() < 0.01
    shared = frame_b["embedding_hash"][0]
    assert np.abs(b.lookup([shared])[shared] - vectors_b[0]).max() < 0.01
    # b knows nothing of a's other hashes, and a's copy of the shared text is a's own
    assert b.lookup(list(frame_a["embedding_hash"][1:])) == {h: None for h in frame_a["embedding_hash"][1:]}
    assert np.abs(a.lookup([shared])[shared] - vectors_a[0]).max() < 0.01
    # the direct online read returns what Feast's get_online_features returns, row for row: an
    # unknown hash and a soft-deleted one are None, and a tenant reads only its own rows
    gone, _ = rows_for(["gone from b"], 6)
    b.write(gone.assign(deleted=True))
    probes = {a: [*frame_a["embedding_hash"], "0" * 64],
              b: [shared, gone["embedding_hash"][0], *frame_a["embedding_hash"][1:]]}
    found = {a: [True, True, True, False], b: [True, False, False, False]}
    for features, probe in probes.items():
        served = store.get_online_features(
            features=["chunk_embeddings:chunk_id", "chunk_embeddings:scale", "chunk_embeddings:deleted"],
            entity_rows=[{"tenant_id": features.tenant_id, "embedding_hash": h} for h in probe]).to_dict()
        expected = [None if served["deleted"][i] is None or served["deleted"][i]
                    else {"chunk_id": served["chunk_id"][i], "scale": served["scale"][i]} for i in range(len(probe))]
        assert features.online_rows(probe, ["chunk_id", "scale"]) == expected
        assert [row is not None for row in expected] == found[features]
    assert served["deleted"][1] is True  # b's tombstone is in the online store, and read as gone
    offline = a.stored_rows()  # read back from the offline store (a directory or S3)
    assert set(offline["tenant_id"]) == {"feat-a"} and len(offline) == 3
    # Feast's own offline retrieval reads the same files
    history = store.get_historical_features(
        entity_df=pd.DataFrame({"tenant_id": ["feat-a"], "embedding_hash": [frame_a["embedding_hash"][1]],
                                "event_timestamp": [pd.Timestamp.now(tz="UTC")]}),
        features=["chunk_embeddings:scale"]).to_df()
    assert history["scale"].iloc[0] == pytest.approx(float(frame_a["scale"][1]))
    assert a.drop_all() == 3 and a.stored_rows().empty and a.lookup([shared])[shared] is None


def test_cache_hits_misses_and_hit_rate(feast_settings):
    settings = feast_settings
    store = open_feature_store(settings)
    registry = CollectorRegistry()
    features = TenantFeatures(store, settings, "feat-c", FeatureCacheMetrics.for_registry(registry))
    frame, _ = rows_for(["x", "y"], 3)
    features.write(frame)
    hashes = list(frame["embedding_hash"])
    features.lookup(hashes)
    features.lookup(hashes[:1])  # the same hash twice is a hit
    assert (features.hits, features.misses) == (1, 2) and features.hit_rate == pytest.approx(1 / 3)
    assert registry.get_sample_value("feature_cache_hits_total", {"tenant": "feat-c"}) == 1
    assert registry.get_sample_value("feature_cache_misses_total", {"tenant": "feat-c"}) == 2


def test_soft_deleted_vectors_are_excluded(feast_settings):
    settings = feast_settings
    store = open_feature_store(settings)
    features = TenantFeatures(store, settings, "feat-d", FeatureCacheMetrics.for_registry(CollectorRegistry()))
    frame, _ = rows_for(["keep", "drop"], 4)
    features.write(frame)
    features.write(frame.iloc[[1]].assign(deleted=True))
    result = features.lookup(list(frame["embedding_hash"]))
    assert result[frame["embedding_hash"][0]] is not None and result[frame["embedding_hash"][1]] is None
    assert features.stored_rows().set_index("embedding_hash").loc[frame["embedding_hash"][1], "deleted"]


def test_a_hidden_document_is_restored_by_undo_and_its_values_go_with_the_tenant(feast_settings):
    from tests.stored_text import online_values_held

    settings = feast_settings
    store = open_feature_store(settings)
    features = TenantFeatures(store, settings, "feat-h", FeatureCacheMetrics.for_registry(CollectorRegistry()))
    frame, vectors = rows_for(["one", "two"], 5)
    features.write(frame.assign(doc_id=["hidden.txt", "other.txt"]))
    hashes = list(frame["embedding_hash"])
    assert features.hide_document("hidden.txt") == 1 and features.hidden_hashes() == {hashes[0]}
    assert features.lookup(hashes[:1]) == {hashes[0]: None} and online_values_held(features, hashes) == 2
    assert features.restore_document("hidden.txt") == 1 and features.restore_document("hidden.txt") == 0
    assert np.abs(features.lookup(hashes[:1])[hashes[0]] - vectors[0]).max() < 0.01
    features.hide_document("hidden.txt")
    # tenant removal drops the hidden document's values too, online and offline
    assert features.drop_all() == 1 and features.stored_rows().empty
    assert online_values_held(features, hashes) == 0


def test_overlapping_writes_keep_every_row_and_a_write_costs_its_own_rows(feast_settings):
    import threading

    from datacreek_assets.embeddings.feature_store import COMPACT_AT

    settings = feast_settings
    store = open_feature_store(settings)
    features = TenantFeatures(store, settings, "feat-e", FeatureCacheMetrics.for_registry(CollectorRegistry()))
    base, _ = rows_for([f"base {i}" for i in range(200)], 5)
    features.write(base)
    batches = [rows_for([f"writer {w} row {i}" for i in range(5)], 10 + w)[0] for w in range(6)]
    barrier, errors = threading.Barrier(len(batches), timeout=120), []

    def write(frame):
        from feast import FeatureStore

        try:
            # its own store and connections, as each run's process has
            own = FeatureStore(config=settings.repo_config(), repo_path=str(REPO / "feature_repo"))
            barrier.wait()
            TenantFeatures(own, settings, "feat-e", features.metrics).write(frame)
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(frame,)) for frame in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = features.stored_rows()
    expected = set(base["embedding_hash"]).union(*(set(frame["embedding_hash"]) for frame in batches))
    assert set(stored["embedding_hash"]) == expected and len(stored) == 230  # no overlapping write lost
    # each write added a file of its own rows; the 200-row history was not rewritten
    filesystem, _ = settings.filesystem(features.offline_path)
    sizes = sorted(len(pd.read_parquet(path, filesystem=filesystem)) for path in features.offline_files())
    assert sizes == [5] * 6 + [200]
    # an update and a deletion are newer rows; compaction keeps only the newest of each hash
    changed, vectors = rows_for(["base 0"], 99)
    features.write(changed)
    features.write(base.iloc[[1]].assign(deleted=True))
    assert COMPACT_AT == 8 and len(features.offline_files()) == 1  # the ninth file set off a compaction
    assert features.compact() == 0  # one file: nothing to fold
    after = features.stored_rows().set_index("embedding_hash")
    assert len(after) == 230 and after.loc[base["embedding_hash"][1], "deleted"]
    assert after.loc[changed["embedding_hash"][0], "scale"] == pytest.approx(float(changed["scale"][0]))
    fresh = TenantFeatures(store, settings, "feat-e", features.metrics)  # an empty cache reads online
    assert np.abs(fresh.lookup([changed["embedding_hash"][0]])[changed["embedding_hash"][0]] - vectors[0]).max() < 0.01
    assert features.live_count() == 229
    assert features.drop_all() == 229 and features.offline_files() == []
