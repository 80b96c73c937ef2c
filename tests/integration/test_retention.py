"""Retention against real stores: the lifecycle rule merged into a bucket on moto's S3 server, the
audit over S3 versions, and the retention_audit asset with its blocking check through Dagster."""

import os
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from datacreek_assets.defs.retention.assets import nothing_kept_past_retention, retention_audit
from datacreek_assets.object_store import S3ObjectStore, TenantObjectStore
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.retention.audit import enforce_retention
from datacreek_assets.retention.lifecycle import TOXIC_RULE_ID, ensure_toxic_expiry, read_rules
from resources.stores import ObjectStoreResource

pytestmark = pytest.mark.integration

OTHER_RULES = [
    {"ID": "logs-to-glacier", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
     "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]},
    {"ID": "tmp-expiry", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled", "Expiration": {"Days": 1}},
]


def test_the_toxic_rule_is_merged_into_the_bucket_and_keeps_every_other_rule(s3_resource, s3_bucket):
    s3 = s3_resource.get_client()
    assert read_rules(s3, s3_bucket) == []  # no configuration at all reads as no rules
    first = ensure_toxic_expiry(s3, s3_bucket)
    assert first.changed and first.rule_ids == [TOXIC_RULE_ID]

    s3.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [
        *OTHER_RULES, {"ID": TOXIC_RULE_ID, "Filter": {"Prefix": "ingest-toxic/"}, "Status": "Enabled",
                       "Expiration": {"Days": 30}}]})  # someone loosened ours and added theirs
    fixed = ensure_toxic_expiry(s3, s3_bucket)
    assert fixed.changed
    rules = {r["ID"]: r for r in read_rules(s3, s3_bucket)}
    assert set(rules) == {TOXIC_RULE_ID, "logs-to-glacier", "tmp-expiry"}
    assert rules[TOXIC_RULE_ID]["Expiration"]["Days"] == 7
    assert rules["logs-to-glacier"]["Transitions"][0]["StorageClass"] == "GLACIER"
    assert rules["tmp-expiry"]["Expiration"]["Days"] == 1

    again = ensure_toxic_expiry(s3, s3_bucket)  # idempotent: in place, nothing written
    assert not again.changed and sorted(again.rule_ids) == sorted(rules)
    assert "NoncurrentVersionExpiration" not in rules[TOXIC_RULE_ID]

    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    versioned = ensure_toxic_expiry(s3, s3_bucket)
    assert versioned.changed and versioned.versioned
    ours = next(r for r in read_rules(s3, s3_bucket) if r["ID"] == TOXIC_RULE_ID)
    assert ours["NoncurrentVersionExpiration"]["NoncurrentDays"] == 7
    assert len(read_rules(s3, s3_bucket)) == 3


def test_the_object_store_resource_applies_the_rule_to_a_bucket_and_not_to_a_directory(s3_resource, s3_bucket,
                                                                                        tmp_path):
    objects = ObjectStoreResource(backend="s3", bucket=s3_bucket, s3=s3_resource)
    assert objects.ensure_lifecycle().changed and not objects.ensure_lifecycle().changed
    local = ObjectStoreResource(backend="local", root=str(tmp_path))
    assert local.ensure_lifecycle() is None  # a directory has no lifecycle: the audit enforces it


def test_the_audit_removes_every_old_copy_in_a_versioned_bucket(s3_resource, s3_bucket):
    s3 = s3_resource.get_client()
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    root = S3ObjectStore(s3_bucket, s3_resource.get_client())
    acme, globex = TenantObjectStore(root, "acme"), TenantObjectStore(root, "globex")
    acme.put("doc-1/chunk.json", b"first copy", area="toxic")
    acme.put("doc-1/chunk.json", b"second copy", area="toxic")  # the first becomes noncurrent
    acme.put("doc-2/chunk.json", b"gone", area="toxic")
    acme.delete("doc-2/chunk.json", area="toxic")  # a delete marker over a version that still holds bytes
    globex.put("doc-9/chunk.json", b"globex's", area="toxic")
    s3.put_object(Bucket=s3_bucket, Key="ingest-toxic/acme/folder/", Body=b"")  # a key no put of ours makes
    assert len(acme.versions(area="toxic")) == 5

    # moto never ages an object: look at the bucket from eight days on
    later = datetime.now(timezone.utc) + timedelta(days=8)
    report = enforce_retention(acme, now=later)
    assert (report.scanned, report.over_limit, report.deleted, report.remaining_over_limit) == (5, 5, 5, 0)
    listed = s3.list_object_versions(Bucket=s3_bucket, Prefix="ingest-toxic/")
    keys = [v["Key"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])]
    assert keys == ["ingest-toxic/globex/doc-9/chunk.json"]  # acme's copies are gone, all of them

    fresh = enforce_retention(globex)  # today nothing of globex's is old
    assert (fresh.scanned, fresh.deleted) == (1, 0)


def test_the_audit_asset_deletes_old_copies_and_its_check_blocks_while_any_remain(tmp_path, instance):
    objects = ObjectStoreResource(backend="local", root=str(tmp_path / "objects"))
    store = objects.for_tenant("ret-a")
    neighbour = objects.for_tenant("ret-b")
    for tenant_store in (store, neighbour):
        tenant_store.put("doc/old.json", b"flagged", area="toxic")
        old = (datetime.now(timezone.utc) - timedelta(days=8)).timestamp()
        os.utime(tenant_store.store.root / tenant_store.key("doc/old.json", "toxic"), (old, old))
    store.put("doc/new.json", b"flagged today", area="toxic")
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["ret-a", "ret-b"])
    assets = [retention_audit, nothing_kept_past_retention]

    check_only = dg.materialize(assets, selection=dg.AssetSelection.checks(nothing_kept_past_retention),
                                tags={"dagster/partition": "ret-a"}, instance=instance,
                                resources={"object_store": objects}, raise_on_error=False)
    [evaluation] = check_only.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["older_than_limit"].value == 1

    result = dg.materialize(assets, partition_key="ret-a", instance=instance, resources={"object_store": objects})
    meta = result.asset_materializations_for_node("retention_audit")[0].metadata
    assert (meta["scanned"].value, meta["deleted"].value, meta["remaining_over_limit"].value) == (2, 1, 0)
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["scanned"].value == 1
    assert store.list(area="toxic") == ["doc/new.json"]
    assert neighbour.exists("doc/old.json", area="toxic")  # ret-b's partition has not run


def test_model_gc_deletes_an_mlflow_runs_artifacts_and_versions_and_only_its_own_tenants(tmp_path):
    from datacreek_assets.finetune.tracking import ForeignRun, TenantTracking

    uri, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")
    acme, globex = TenantTracking(uri, artifacts, "acme"), TenantTracking(uri, artifacts, "globex")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    old, kept, foreign = (acme.start_run("old", {}), acme.start_run("kept", {}), globex.start_run("theirs", {}))
    for tracking, run_id in ((acme, old), (acme, kept), (globex, foreign)):
        tracking.log_artifact(run_id, adapter, "gguf")
        tracking.finish(run_id)
        tracking.register(run_id, "gguf")
    old_dir = tmp_path / "artifacts" / "acme" / old / "artifacts"
    assert (old_dir / "gguf" / "adapter" / "adapter_config.json").exists()

    with pytest.raises(ForeignRun):
        acme.delete_run(foreign)
    acme.delete_run(old)
    assert not (old_dir / "gguf").exists()
    assert acme.client.get_run(old).info.lifecycle_stage == "deleted"
    assert [v.run_id for v in acme.client.search_model_versions(f"name='{acme.model_name}'")] == [kept]
    assert acme.client.get_run(kept).info.lifecycle_stage == "active"
    assert globex.client.get_run(foreign).info.lifecycle_stage == "active"
