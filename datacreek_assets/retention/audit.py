"""The retention audit: what in a tenant's store has outlived its promise, removed and reported.

Neither moto's S3 nor the local directory store expires anything, and AWS expires objects
asynchronously (an object becomes eligible at the first midnight UTC after its age reaches the
rule's days, and removal may lag behind that). The audit scans every stored copy of the area
(noncurrent versions and delete markers included), deletes each copy older than the retention
period and scans again: "nothing older than 7 days" is checked on what the store lists, not on
what the audit believes it deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from datacreek_assets.object_store import StoredVersion, TenantObjectStore
from datacreek_assets.retention.lifecycle import TOXIC_RETENTION_DAYS


def lifecycle_expiry(modified: datetime, days: int) -> datetime:
    """When an S3 lifecycle rule makes an object eligible for expiry: its time plus ``days``,
    rounded up to the next midnight UTC."""
    due = modified.astimezone(timezone.utc) + timedelta(days=days)
    midnight = due.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == due else midnight + timedelta(days=1)


@dataclass
class RetentionScan:
    scanned: int = 0
    over_limit: list[StoredVersion] = field(default_factory=list)  # older than the retention period
    past_lifecycle_expiry: int = 0  # of those, copies a store enforcing the rule would have removed
    oldest_age_days: float | None = None


def scan(store: TenantObjectStore, area: str, days: int, now: datetime) -> RetentionScan:
    result = RetentionScan()
    limit = timedelta(days=days)
    for version in store.versions(area):
        result.scanned += 1
        age = now - version.modified
        result.oldest_age_days = max(result.oldest_age_days or 0.0, age.total_seconds() / 86400)
        if age > limit:
            result.over_limit.append(version)
            result.past_lifecycle_expiry += now >= lifecycle_expiry(version.modified, days)
    return result


@dataclass
class RetentionReport:
    area: str
    days: int
    scanned: int
    over_limit: int
    past_lifecycle_expiry: int
    deleted: int
    remaining_over_limit: int
    oldest_age_days: float | None

    def as_metadata(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def enforce_retention(store: TenantObjectStore, area: str = "toxic", days: int = TOXIC_RETENTION_DAYS,
                      now: datetime | None = None, delete: bool = True) -> RetentionReport:
    """Delete every copy in ``area`` older than ``days`` (unless ``delete`` is off: a dry run), then
    scan again and report what is left over the limit."""
    now = now or datetime.now(timezone.utc)
    before = scan(store, area, days, now)
    deleted = 0
    if delete:
        for version in before.over_limit:
            store.delete_version(version, area=area)
            deleted += 1
    after = scan(store, area, days, now) if delete else before
    return RetentionReport(area, days, before.scanned, len(before.over_limit), before.past_lifecycle_expiry,
                           deleted, len(after.over_limit), before.oldest_age_days)
