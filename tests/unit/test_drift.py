"""Embedding drift: the metric, and the sensor that turns a critical drift into one retraining request."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from datacreek_assets.defs.retraining.sensors import DETECTED_AT_TAG, TRIGGER_TAG, embedding_drift_sensor
from datacreek_assets.embeddings.drift import CRITICAL, WARN, drift_score, level_of, linear_mmd2
from datacreek_assets.embeddings.stats import reference_statistics
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.tenancy import TENANT_TAG


def topic_corpus(n: int, centers: np.ndarray, seed: int) -> np.ndarray:
    """Unit vectors around topic centres, the shape MiniLM gives a tenant's chunks."""
    rng = np.random.default_rng(seed)
    v = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 0.045, (n, centers.shape[1]))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


CENTERS = unit(np.random.default_rng(0).normal(size=(20, 384)))
NEW_TOPICS = unit(np.random.default_rng(1).normal(size=(5, 384)))


@pytest.fixture(scope="module")
def reference():
    return reference_statistics(topic_corpus(10_000, CENTERS, seed=2))


def test_same_distribution_and_small_noise_stay_far_below_the_warn_level(reference):
    same = topic_corpus(10_000, CENTERS, seed=3)
    noisy = unit(same + np.random.default_rng(4).normal(0, 0.01, same.shape)).astype(np.float32)
    for vectors in (same, noisy):
        report = drift_score(reference, vectors)
        assert report.level == "ok" and report.drift < WARN / 5, report
        assert report.pairs == 1024  # 2048 reference samples, paired


def test_new_topics_are_critical_and_drift_grows_with_their_share(reference):
    same = topic_corpus(10_000, CENTERS, seed=3)
    scores = []
    for share in (0.1, 0.3, 0.5):
        k = int(len(same) * share)
        mixed = np.vstack([same[k:], topic_corpus(k, NEW_TOPICS, seed=5)])
        scores.append(drift_score(reference, mixed).drift)
    assert scores == sorted(scores) and scores[-1] >= CRITICAL and drift_score(reference, mixed).level == "critical"


def test_the_mmd_term_sees_a_change_of_shape_the_centroid_does_not():
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1.0, (4000, 8))
    wide = rng.normal(0, 2.0, (4000, 8))  # same mean, different spread
    same, _ = linear_mmd2(x, rng.normal(0, 1.0, (4000, 8)), bandwidth=3.0)
    changed, pairs = linear_mmd2(x, wide, bandwidth=3.0)
    assert pairs == 2000 and abs(same) < 0.01 and changed > 0.1


def test_levels_and_empty_inputs(reference):
    assert [level_of(d) for d in (0.0, 0.069, 0.07, 0.099, 0.1, 1.0)] == ["ok", "ok", "warn", "warn", "critical",
                                                                         "critical"]
    assert drift_score(reference, np.zeros((0, 384), np.float32)).level == "ok"


@dg.op
def wait_in_queue():
    pass


@dg.job
def placeholder_job():
    """Stands for the queued retrain_tenant run: only its tags and status matter to the sensor."""
    wait_in_queue()


def materialize_drift(instance, tenant: str, drift: float) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "chunk_embeddings", partition=tenant, metadata={"drift": drift, "drift_level": level_of(drift)}))


def test_a_critical_drift_requests_exactly_one_retraining_and_the_cursor_advances(instance):
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["acme", "globex"])
    materialize_drift(instance, "acme", 0.15)  # critical
    materialize_drift(instance, "globex", 0.02)  # small noise
    materialize_drift(instance, "globex", 0.08)  # warn: recorded on the asset, not retrained
    first = embedding_drift_sensor(dg.build_sensor_context(instance=instance, cursor=None))
    [request] = first.run_requests
    assert request.partition_key == "acme" and request.tags[TENANT_TAG] == "acme"
    assert request.tags[TRIGGER_TAG] == "drift" and float(request.tags[DETECTED_AT_TAG]) > 0
    assert request.run_key.startswith("drift:acme:")
    watermark = int(first.cursor)
    assert watermark > 0 and first.cursor.isdigit()  # a watermark, never a set of tenants

    # the next tick sees nothing new: no request, same cursor
    again = embedding_drift_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert not again.run_requests and int(again.cursor) == watermark

    # the retraining is running; another critical materialization does not ask twice
    instance.create_run_for_job(placeholder_job, tags={TENANT_TAG: "acme", TRIGGER_TAG: "drift"},
                                status=dg.DagsterRunStatus.STARTED)
    materialize_drift(instance, "acme", 0.2)
    during = embedding_drift_sensor(dg.build_sensor_context(instance=instance, cursor=again.cursor))
    assert not during.run_requests and int(during.cursor) > watermark


def test_a_replayed_cursor_gives_the_same_run_key(instance):
    """Dagster drops a RunRequest whose run_key it has seen: a replayed tick cannot retrain twice."""
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["acme"])
    materialize_drift(instance, "acme", 0.3)
    a = embedding_drift_sensor(dg.build_sensor_context(instance=instance, cursor="0"))
    b = embedding_drift_sensor(dg.build_sensor_context(instance=instance, cursor="0"))
    assert [r.run_key for r in a.run_requests] == [r.run_key for r in b.run_requests] and len(a.run_requests) == 1
