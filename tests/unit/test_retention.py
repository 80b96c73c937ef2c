"""Retention on the local directory store: expiry dates as S3 computes them, the audit's deletions."""

import os
from datetime import datetime, timedelta, timezone

import pytest

from datacreek_assets.object_store import LocalObjectStore, TenantObjectStore
from datacreek_assets.retention.audit import enforce_retention, lifecycle_expiry, scan
from datacreek_assets.retention.lifecycle import LifecycleError, toxic_expiry_rule

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def test_s3_rounds_an_expiry_up_to_the_next_midnight_utc():
    assert lifecycle_expiry(datetime(2026, 11, 20, 13, 30, tzinfo=timezone.utc), 7) == datetime(
        2026, 11, 28, tzinfo=timezone.utc)
    assert lifecycle_expiry(datetime(2026, 11, 20, tzinfo=timezone.utc), 7) == datetime(2026, 11, 27, tzinfo=timezone.utc)
    # an aware time in another zone is the same instant
    cet = timezone(timedelta(hours=1))
    assert lifecycle_expiry(datetime(2026, 11, 21, 0, 30, tzinfo=cet), 7) == datetime(2026, 11, 28, tzinfo=timezone.utc)


def test_the_rule_expires_noncurrent_versions_only_in_a_versioned_bucket():
    assert "NoncurrentVersionExpiration" not in toxic_expiry_rule(7, versioned=False)
    assert toxic_expiry_rule(7, versioned=True)["NoncurrentVersionExpiration"] == {"NoncurrentDays": 7}
    with pytest.raises(LifecycleError):
        toxic_expiry_rule(0)


def aged(store: TenantObjectStore, key: str, age: timedelta, area: str = "toxic") -> None:
    store.put(key, b"flagged chunk", area=area)
    stamp = (NOW - age).timestamp()
    os.utime(store.store.root / store.key(key, area), (stamp, stamp))


def test_the_audit_deletes_only_what_outlived_seven_days_and_only_in_its_tenant(tmp_path):
    root = LocalObjectStore(tmp_path)
    acme, globex = TenantObjectStore(root, "acme"), TenantObjectStore(root, "globex")
    aged(acme, "doc/old.json", timedelta(days=9))
    aged(acme, "doc/edge.json", timedelta(days=7, hours=3))  # over 7 days, before S3's rounded expiry
    aged(acme, "doc/young.json", timedelta(days=6, hours=23))
    aged(acme, "inbox/kept.md", timedelta(days=90), area="tenant")  # retention covers ingest-toxic/ only
    aged(globex, "doc/old.json", timedelta(days=30))

    dry = enforce_retention(acme, now=NOW, delete=False)
    assert (dry.scanned, dry.over_limit, dry.past_lifecycle_expiry, dry.deleted) == (3, 2, 1, 0)
    assert dry.remaining_over_limit == 2 and acme.exists("doc/old.json", area="toxic")

    report = enforce_retention(acme, now=NOW)
    assert (report.over_limit, report.deleted, report.remaining_over_limit) == (2, 2, 0)
    assert report.oldest_age_days == pytest.approx(9.0)
    assert acme.list(area="toxic") == ["doc/young.json"]
    assert acme.exists("inbox/kept.md")
    assert globex.exists("doc/old.json", area="toxic")  # another tenant's copy is not acme's to judge
    assert scan(acme, "toxic", 7, NOW).over_limit == []
    assert report.as_metadata()["oldest_age_days"] == 9.0
