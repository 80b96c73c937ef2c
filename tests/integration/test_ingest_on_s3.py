"""The ingest assets with the prod object store: S3 (moto's server), through Dagster."""

import dagster as dg
import pytest

from datacreek_assets.defs.ingest.assets import CHUNKS_KEY, parsed_chunks, raw_documents
from datacreek_assets.ingest.simple_pdf import text_pdf
from datacreek_assets.partitions import TENANTS_PARTITION
from resources.stores import ObjectStoreResource, TenantRegistryResource

pytestmark = pytest.mark.integration


def test_ingest_reads_the_s3_inbox_and_quarantines_bad_keys(s3_resource, s3_bucket, tmp_path, instance):
    objects = ObjectStoreResource(backend="s3", bucket=s3_bucket, s3=s3_resource)
    registry = TenantRegistryResource(url=f"sqlite:///{tmp_path / 'registry.db'}")
    registry.registry().add("s3-tenant")
    inbox = objects.for_tenant("s3-tenant")
    inbox.put("inbox/a.md", b"# Rivers\n\nThe Danube flows through Vienna and Budapest.")
    inbox.put("inbox/b.pdf", text_pdf("Python is a programming language."))
    inbox.put("inbox/c.txt", b"\xff\xfe broken")
    # an S3 "folder" marker, which no filesystem would have: quarantined, not fatal
    s3_resource.get_client().put_object(
        Bucket=s3_bucket, Key="tenants/s3-tenant/inbox/sub/", Body=b"")
    objects.for_tenant("s3-other").put("inbox/secret.txt", b"Never read by s3-tenant.")
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["s3-tenant"])
    result = dg.materialize([raw_documents, parsed_chunks], partition_key="s3-tenant", instance=instance,
                            resources={"object_store": objects, "tenant_registry": registry})
    assert result.success
    meta = result.asset_materializations_for_node("raw_documents")[0].metadata
    assert meta["documents"].value == 2 and meta["quarantined"].value == 2
    reasons = meta["quarantined_documents"].value
    assert "invalid object key" in reasons and "invalid UTF-8" in reasons
    chunks = inbox.get_jsonl(CHUNKS_KEY)
    assert {c["doc_id"] for c in chunks} == {"a.md", "b.pdf"}
    assert not any("Never read" in c["text"] for c in chunks)


def test_a_partition_without_onboarding_is_refused(s3_resource, s3_bucket, tmp_path, instance):
    objects = ObjectStoreResource(backend="s3", bucket=s3_bucket, s3=s3_resource)
    registry = TenantRegistryResource(url=f"sqlite:///{tmp_path / 'registry.db'}")
    instance.add_dynamic_partitions(TENANTS_PARTITION, ["not-onboarded"])
    result = dg.materialize([raw_documents], partition_key="not-onboarded", instance=instance,
                            resources={"object_store": objects, "tenant_registry": registry}, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][0]
    assert "not onboarded" in failure.event_specific_data.error.message
    assert objects.for_tenant("not-onboarded").list() == []
