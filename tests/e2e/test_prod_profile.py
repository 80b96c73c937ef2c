"""`DATACREEK_PROFILE=prod` end to end on this machine: the Dagster instance, the tenant registry,
the ledger and MLflow on a real PostgreSQL, documents and Feast's offline store on S3 (moto's
server), Feast online in Redis (FalkorDB speaks it), Neo4j; `datacreek tenant add` and
`datacreek materialize` run as an operator runs them, every variable coming from the environment,
and the run itself with the tenant's own credentials (`datacreek tenant credentials`), as its pods
would.

Left out: `canary_release`. Its prod settings name a Ray cluster and a router of their own, and this
session's router already serves the local release store; test_serving covers that asset's code
against a real Ray Serve."""

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import boto3
import psutil
import pytest
import redis
import yaml

from datacreek_assets.demo_corpus import write_demo_corpus
from datacreek_assets.object_store import S3ObjectStore, TenantObjectStore
from datacreek_assets.retention.lifecycle import TOXIC_RULE_ID
from datacreek_assets.serving.control_api import control_token
from datacreek_assets.streaming.event_auth import KeyGenerations
from datacreek_assets.streaming.events import EventLog

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TENANT = "prod-e2e"
# everything the main job builds but the release (see the module's docstring)
SELECT = ("raw_documents,parsed_chunks,knowledge_graph,chunk_embeddings,embedding_features,retrieval_index,"
          "persistence_sketches,umap_lens,mapper_graph,sft_dataset,finetuned_adapter,gguf_model,qa_eval,retention_audit,"
          "edge_review_queue")


def _command_line(process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone, or not ours to read
        return ""


def tenant_events(bootstrap: str, tenant: str, secret: str, keys) -> list:
    """The tenant's events on the topic (its partition, up to its end now), each verified against
    the tenant's current signing key (EventLogError if one is not) and with its key id."""
    from confluent_kafka import Consumer, TopicPartition

    from datacreek_assets.streaming.event_auth import KEY_ID_FIELD, verified
    from datacreek_assets.streaming.events import EVENTS_TOPIC, tenant_partition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        partition = TopicPartition(EVENTS_TOPIC, tenant_partition(tenant), 0)
        end = consumer.get_watermark_offsets(partition, timeout=10)[1]
        consumer.assign([partition])
        found = []
        while end and (message := consumer.poll(10)) is not None:
            if not message.error():
                if message.key() == tenant.encode():
                    found.append((verified(message.value(), secret, keys.current),
                                  json.loads(message.value())[KEY_ID_FIELD]))
                if message.offset() + 1 >= end:
                    break
        return found
    finally:
        consumer.close()


@pytest.fixture
def prod_env(services, postgres, s3_endpoint, s3_bucket, tmp_path) -> dict[str, str]:
    def database(purpose: str, driver: str = "psycopg") -> str:
        url = postgres.create_database(f"{purpose}_{uuid.uuid4().hex[:8]}")
        return url.replace("postgresql+psycopg://", f"postgresql+{driver}://")

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "k8s" / "dagster-instance.yaml", home / "dagster.yaml")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DATACREEK_", "DAGSTER_"))}
    env.update({
        "DATACREEK_PROFILE": "prod",
        "DAGSTER_HOME": str(home),
        "DATACREEK_STATE_DIR": str(tmp_path / "unused-local-state"),
        "DATACREEK_DAGSTER_POSTGRES_URL": database("dagster", "psycopg2"),
        "DATACREEK_POSTGRES_URL": database("registry"),
        "DATACREEK_LEDGER_URL": database("ledger"),
        "DATACREEK_SERVING_STORE_URL": database("serving"),
        "DATACREEK_CURATION_STORE_URL": database("curation"),
        "DATACREEK_MLFLOW_TRACKING_URI": database("mlflow", "psycopg2"),
        "DATACREEK_MLFLOW_ARTIFACT_ROOT": f"s3://{s3_bucket}/mlflow",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "DATACREEK_NEO4J_URI": services.neo4j_uri, "DATACREEK_NEO4J_USER": "", "DATACREEK_NEO4J_PASSWORD": "",
        "DATACREEK_NEO4J_ISOLATION": "label",
        "DATACREEK_FALKORDB_HOST": "127.0.0.1", "DATACREEK_FALKORDB_PORT": str(services.falkordb_port),
        "DATACREEK_FALKORDB_USER": "", "DATACREEK_FALKORDB_PASSWORD": "",
        "DATACREEK_S3_BUCKET": s3_bucket, "DATACREEK_S3_ENDPOINT_URL": s3_endpoint,
        "DATACREEK_FEAST_REGISTRY": str(tmp_path / "feast" / "registry.db"),
        "DATACREEK_FEAST_OFFLINE_URI": f"s3://{s3_bucket}/feast/offline",
        "DATACREEK_FEAST_REDIS": f"127.0.0.1:{services.falkordb_port}",
        "DATACREEK_KAFKA_BOOTSTRAP": f"127.0.0.1:{services.kafka_port}",
        "DATACREEK_KAFKA_TENANT_BOOTSTRAP": f"127.0.0.1:{services.kafka_tenant_port}",
        "DATACREEK_KAFKA_USERNAME": "", "DATACREEK_KAFKA_PASSWORD": "", "DATACREEK_EVENT_SIGNING_KEY": "",
        "DATACREEK_EVENT_SIGNING_SECRET": services.event_signing_secret(),
        "DATACREEK_FLINK_REST_URL": f"http://127.0.0.1:{services.flink_rest_port}",
        "DATACREEK_MODELS_DIR": str(tmp_path / "models"),
        "DATACREEK_BASE_MODELS_DIR": str(services.download_cache / "models"),
        "DATACREEK_BASE_MODEL": "tiny-llama", "DATACREEK_CPU_FALLBACK": "fp32",
        "DATACREEK_RAY_ADDRESS": f"127.0.0.1:{services.ray_port}", "DATACREEK_SERVE_PORT": str(services.serve_port),
        "DATACREEK_ROUTER_URL": f"http://127.0.0.1:{services.serve_port}",
        "DATACREEK_SERVING_ADMIN_TOKEN": "prod-profile-admin-token-0001",
        "DATACREEK_MODEL_CACHE_DIR": str(tmp_path / "model-cache"), "DATACREEK_MODEL_CACHE_GB": "20",
        "DATACREEK_SERVING_POOL_MAX_REPLICAS": "2",
        "DATACREEK_SERVING_CONTROL_SECRET": "prod-profile-control-secret",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    })
    return env


def test_the_prod_profile_materializes_a_tenant_on_postgres_s3_redis_and_neo4j(prod_env, datacreek, s3_endpoint,
                                                                                s3_bucket, postgres):
    def cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        # its output through files, not pipes: a process it left behind holding them would make a
        # pipe's reader wait forever (Dagster's compute-log tailers once did; see leftovers below)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            done = subprocess.run([datacreek, *args], env={**prod_env, **(env or {})}, stdout=out, stderr=err,
                                  text=True, timeout=timeout)
            out.seek(0), err.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())

    def leftovers() -> list[str]:
        """Processes still running on this test's Dagster home (a run's log tailers, say)."""
        home = prod_env["DAGSTER_HOME"]
        return [line for line in map(_command_line, psutil.process_iter()) if home in line]

    for state in ("written", "already in place"):  # the deploy step, twice: idempotent
        lifecycle = cli("storage", "lifecycle")
        assert lifecycle.returncode == 0 and f"rule {TOXIC_RULE_ID} {state}" in lifecycle.stdout, lifecycle.stderr
    # and the event topics, which the platform makes (a tenant's Kafka user may not create topics)
    EventLog(prod_env["DATACREEK_KAFKA_BOOTSTRAP"]).ensure_topics()
    added = cli("tenant", "add", TENANT)
    assert added.returncode == 0, added.stderr
    assert "graph migrations (at 1)" in added.stdout
    try:
        # the tenant's own credentials, as its pods get them: the Secret's variables over the platform's
        issued = cli("tenant", "credentials", TENANT)
        assert issued.returncode == 0, issued.stderr
        secret = yaml.safe_load(issued.stdout)
        assert (secret["kind"], secret["metadata"]["name"], secret["metadata"]["namespace"]) == (
            "Secret", "datacreek-tenant", f"tenant-{TENANT}")
        own = secret["stringData"]
        assert all("dc_tenant_prod_e2e:" in own[k] for k in ("DATACREEK_POSTGRES_URL", "DATACREEK_LEDGER_URL",
                                                              "DATACREEK_SERVING_STORE_URL",
                                                              "DATACREEK_CURATION_STORE_URL"))
        assert own["DATACREEK_FALKORDB_USER"] == own["DATACREEK_KAFKA_USERNAME"] == f"tenant-{TENANT}"
        assert own["DATACREEK_EVENT_SIGNING_SECRET"] == "" and own["DATACREEK_EVENT_SIGNING_KEY"]
        assert own["DATACREEK_KAFKA_BOOTSTRAP"] == prod_env["DATACREEK_KAFKA_TENANT_BOOTSTRAP"]
        assert own["DATACREEK_SERVING_CONTROL_TOKEN"] == control_token("prod-profile-control-secret", TENANT)
        # a tenant's pods hold no Ray credentials (release steps go to the serving control API):
        # its run below works with these blanked
        assert own["DATACREEK_RAY_ADDRESS"] == own["DATACREEK_SERVING_ADMIN_TOKEN"] == ""
        assert own["DATACREEK_SERVING_CONTROL_SECRET"] == ""
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        write_demo_corpus(TenantObjectStore(S3ObjectStore(s3_bucket, s3), TENANT), max_docs=4)
        run = cli("materialize", "--tenant", TENANT, "--select", SELECT, timeout=800, env=own)  # < pytest's 900 s
        # Every asset materializes; then the release gate judges the model against the prod margin
        # (tuned F1 0.02 above the base's). Whether a random 2-layer Llama clears it follows the CPU's
        # float kernels, so either verdict is right here, as long as the gate is the only failed step.
        output = run.stdout + run.stderr
        assert not (left := leftovers()), left  # the CLI leaves nothing of the run behind
        assert (run.returncode == 0 and "succeeded" in run.stdout) or (
            run.returncode == 1 and "Steps failed: ['qa_eval_tuned_beats_base']" in output), output[-4000:]

        # the graph's events went out as the tenant's Kafka user, signed with the tenant's key as issued
        keys = KeyGenerations(redis.Redis(host="127.0.0.1", port=int(prod_env["DATACREEK_FALKORDB_PORT"])))
        events = tenant_events(prod_env["DATACREEK_KAFKA_BOOTSTRAP"], TENANT, prod_env["DATACREEK_EVENT_SIGNING_SECRET"],
                               keys)
        assert events and {e.tenant_id for e, _ in events} == {TENANT}
        assert {kid for _, kid in events} == {keys.current(TENANT)} == {int(own["DATACREEK_EVENT_SIGNING_KEY"].split(":")[0])}

        keys = {item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
                for item in page.get("Contents", [])}
        assert any(k.startswith(f"tenants/{TENANT}/") for k in keys)
        assert any(k.startswith(f"feast/offline/chunk_embeddings/{TENANT}/") for k in keys)  # Feast on S3
        assert any(k.startswith("mlflow/") for k in keys)  # MLflow's artifacts on S3
        with postgres._connect(dbname=prod_env["DATACREEK_DAGSTER_POSTGRES_URL"].rsplit("/", 1)[1]) as conn:
            materialized = {row[0] for row in conn.execute(
                "SELECT DISTINCT asset_key FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")}
        assert len(materialized) == len(SELECT.split(","))  # the run's events are in Postgres
        with postgres._connect(dbname=prod_env["DATACREEK_POSTGRES_URL"].rsplit("/", 1)[1]) as conn:
            assert [row[0] for row in conn.execute("SELECT tenant_id FROM tenants")] == [TENANT]
        # the review queue, written by the tenant's own role under row-level security, read back by it
        with postgres._connect(dbname=prod_env["DATACREEK_CURATION_STORE_URL"].rsplit("/", 1)[1]) as conn:
            queued = conn.execute("SELECT count(*) FROM edge_review_queue WHERE tenant_id = %s", (TENANT,)).fetchone()[0]
        listed = cli("curate", "queue", TENANT, env=own)
        assert queued > 0 and listed.returncode == 0 and f"{queued} open edges" in listed.stdout, listed.stderr
        balance = cli("tenant", "balance", TENANT, "--json")
        assert balance.returncode == 0 and '"balance"' in balance.stdout  # the ledger on Postgres, billed
        # with its own credentials the tenant reads its own balance, and no other tenant's account
        assert cli("tenant", "balance", TENANT, "--json", env=own).stdout == balance.stdout
        assert cli("tenant", "add", "prod-other").returncode == 0
        foreign = cli("tenant", "balance", "prod-other", env=own)
        assert foreign.returncode == 2 and "not registered" in foreign.stderr  # invisible, as if absent
    finally:
        removed = cli("tenant", "remove", TENANT, "--force", timeout=300)
        assert removed.returncode == 0, removed.stderr
        assert "revoked postgres role" in removed.stdout and "revoked falkordb user" in removed.stdout
        assert "revoked kafka user" in removed.stdout and "revoked event signing key" in removed.stdout
        cli("tenant", "remove", "prod-other", "--force", timeout=300)
