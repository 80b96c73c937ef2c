"""The bucket's lifecycle rule for screened-out chunks: ``ingest-toxic/`` expires after 7 days.

A put replaces a bucket's whole lifecycle configuration, so the rule is merged: read the
rules (a bucket without any answers NoSuchLifecycleConfiguration: an empty list), insert or
replace ours by its id, write the full list back and read it again to verify that ours is
there and every other rule survived. In a versioned (or suspended) bucket an expired object
only becomes a noncurrent version, so the rule also expires noncurrent versions.

S3 has no conditional write for lifecycle configurations: two writers racing can still drop
each other's rule. The read-back catches the case where ours was dropped; applying it from one
place (deploy, `datacreek storage lifecycle`) avoids the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

TOXIC_PREFIX = "ingest-toxic/"
TOXIC_RULE_ID = "datacreek-ingest-toxic-expiry"
TOXIC_RETENTION_DAYS = 7


class LifecycleError(RuntimeError):
    """The bucket's lifecycle configuration could not be read, written or verified."""


@dataclass
class LifecycleResult:
    bucket: str
    changed: bool
    versioned: bool
    rule: dict
    rule_ids: list[str]


def toxic_expiry_rule(days: int = TOXIC_RETENTION_DAYS, versioned: bool = False) -> dict:
    if days < 1:
        raise LifecycleError(f"an expiry must be at least 1 day, not {days}")
    rule = {"ID": TOXIC_RULE_ID, "Filter": {"Prefix": TOXIC_PREFIX}, "Status": "Enabled",
            "Expiration": {"Days": days}}
    if versioned:
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": days}
    return rule


def read_configuration(client, bucket: str) -> dict:
    from botocore.exceptions import ClientError

    try:
        return client.get_bucket_lifecycle_configuration(Bucket=bucket)
    except ClientError as err:
        if err.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
            return {"Rules": []}
        raise


def read_rules(client, bucket: str) -> list[dict]:
    return list(read_configuration(client, bucket).get("Rules", []))


def is_versioned(client, bucket: str) -> bool:
    """Enabled or suspended: either way the bucket may hold noncurrent versions."""
    return client.get_bucket_versioning(Bucket=bucket).get("Status") in ("Enabled", "Suspended")


def _essentials(rule: dict) -> tuple:
    """What the rule does, whatever shape the server echoes it back in (Filter or legacy Prefix)."""
    prefix = (rule.get("Filter") or {}).get("Prefix", rule.get("Prefix"))
    return (prefix, rule.get("Status"), (rule.get("Expiration") or {}).get("Days"),
            (rule.get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays"))


def ensure_toxic_expiry(client, bucket: str, days: int = TOXIC_RETENTION_DAYS) -> LifecycleResult:
    """Insert or replace our rule, keep every other rule; idempotent (no write when it is in place)."""
    versioned = is_versioned(client, bucket)
    wanted = toxic_expiry_rule(days, versioned)
    configuration = read_configuration(client, bucket)
    rules = list(configuration.get("Rules", []))
    ours = [r for r in rules if r.get("ID") == TOXIC_RULE_ID]
    others = [r for r in rules if r.get("ID") != TOXIC_RULE_ID]
    if len(ours) == 1 and _essentials(ours[0]) == _essentials(wanted):
        return LifecycleResult(bucket, False, versioned, ours[0], [r.get("ID", "") for r in rules])
    extra = {k: configuration[k] for k in ("TransitionDefaultMinimumObjectSize",) if k in configuration}
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [*others, wanted]},
                                              **extra)  # a put resets bucket-level settings not passed again
    # AWS propagates a new configuration over a while: a read right after the put may be stale
    for delay in (0, 1, 2, 4, 8, 15, 30):
        time.sleep(delay)
        after = read_rules(client, bucket)
        found = [r for r in after if r.get("ID") == TOXIC_RULE_ID]
        if len(found) == 1 and _essentials(found[0]) == _essentials(wanted):
            break
    else:
        raise LifecycleError(f"bucket {bucket!r}: the lifecycle rule {TOXIC_RULE_ID!r} did not read back as written")
    lost = {r.get("ID") for r in others} - {r.get("ID") for r in after}
    if lost:
        raise LifecycleError(f"bucket {bucket!r}: writing the lifecycle configuration lost rule(s) {sorted(lost)}")
    return LifecycleResult(bucket, True, versioned, found[0], [r.get("ID", "") for r in after])
