import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from datacreek_assets.defs import build_definitions
from datacreek_assets.settings import ConfigError, LocalSettings

REPO = Path(__file__).resolve().parents[2]


def test_asset_graph_is_grouped_by_concept(tmp_path):
    defs = build_definitions("local", LocalSettings(state_dir=tmp_path))
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {
        "raw_documents": "ingest", "parsed_chunks": "ingest", "knowledge_graph": "graph",
        "sft_dataset": "datasets", "chunk_embeddings": "embeddings", "embedding_features": "embeddings",
            "retrieval_index": "retrieval",
        "persistence_sketches": "topology", "umap_lens": "topology", "mapper_graph": "topology",
        "finetuned_adapter": "finetune", "gguf_model": "finetune", "qa_eval": "finetune",
        "canary_release": "serving", "production_release": "serving",
        "retention_audit": "retention", "model_gc": "retention", "hot_graph": "streaming",
        "edge_review_queue": "curation",
    }
    assert graph.executable_asset_keys == graph.get_all_asset_keys() - {dg.AssetKey("hot_graph")}  # a service keeps it
    for key in graph.get_all_asset_keys():
        assert graph.get(key).partitions_def.name == "tenants"
    for key in graph.executable_asset_keys:
        # one run per tenant for every group: a run is what Dagster tags, limits and retries
        assert graph.get(key).backfill_policy.max_partitions_per_run == 1
    assert defs.resolve_job_def("purge_job") is not None
    assert defs.resolve_sensor_def("tenant_partitions_sync") is not None
    for sensor in ("embedding_drift_sensor", "quota_sensor", "canary_health_sensor", "purged_data_retrain_sensor",
                   "hot_stream_sensor", "curation_sensor", "mlflow_runs_of_failed_runs", "mlflow_runs_of_canceled_runs"):
        assert defs.resolve_sensor_def(sensor) is not None
    assert defs.resolve_job_def("retrain_tenant") is not None
    assert set(defs.resolve_job_def("curated_rebuild").asset_layer.executable_asset_keys) >= {
        dg.AssetKey("edge_review_queue"), dg.AssetKey("sft_dataset")}
    retention = defs.resolve_job_def("retention_job")
    assert {n.name for n in retention.graph.nodes} == {"retention_audit", "model_gc", "retention_audit_nothing_kept_past_retention"}
    assert defs.resolve_schedule_def("retention_schedule").cron_schedule == "37 3 * * *"


def test_local_runs_keep_a_tenant_s_steps_in_its_run_process(tmp_path):
    job = build_definitions("local", LocalSettings(state_dir=tmp_path)).resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "in_process"
    assert build_definitions("prod").resolve_implicit_global_asset_job_def().executor_def.name == "tenant_k8s"


def test_prod_profile_uses_env_vars_not_local_paths():
    defs = build_definitions("prod")
    graph_store = defs.resources["graph_store"]
    assert isinstance(graph_store.uri, dg.EnvVar) and graph_store.uri.env_var_name == "DATACREEK_NEO4J_URI"
    assert defs.resources["object_store"].backend == "s3"
    # model replicas reserve a CPU in the cluster (the serving chart's head takes none), none locally
    assert defs.resources["serving"].replica_cpus == 1.0 == defs.resources["serving"].threads


def test_prod_s3_goes_through_one_dagster_aws_resource_configured_by_env_vars(monkeypatch):
    from dagster_aws.s3 import S3Resource

    for name in ("DATACREEK_S3_PROFILE", "DATACREEK_S3_ACCESS_KEY_ID", "DATACREEK_S3_SECRET_ACCESS_KEY",
                 "DATACREEK_S3_SESSION_TOKEN", "DATACREEK_MLFLOW_UI_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATACREEK_S3_ENDPOINT_URL", "http://s3.internal:9000")
    monkeypatch.setenv("DATACREEK_S3_REGION", "eu-west-1")
    resources = build_definitions("prod").resources
    s3 = resources["s3"]
    assert isinstance(s3, S3Resource)
    assert resources["object_store"].s3 is s3 and resources["feature_store"].s3 is s3
    # set variables become EnvVars (read when a run starts, never shown in run config); unset
    # ones are left to boto3's default chain instead of failing on a missing variable
    assert s3.endpoint_url.env_var_name == "DATACREEK_S3_ENDPOINT_URL"
    assert s3.region_name.env_var_name == "DATACREEK_S3_REGION"
    assert s3.aws_access_key_id is None and s3.profile_name is None
    assert resources["finetune"].mlflow is resources["mlflow"] and resources["mlflow"].ui_url == ""



def test_the_s3_field_takes_only_an_s3_resource(tmp_path):
    from resources.stores import FeatureStoreResource, MlflowTrackingResource, ObjectStoreResource

    not_s3 = MlflowTrackingResource(tracking_uri="sqlite:///x.db", artifact_root=str(tmp_path))
    with pytest.raises(dg.DagsterInvalidConfigError, match="needs a dagster_aws.s3.S3Resource"):
        ObjectStoreResource(backend="s3", bucket="b", s3=not_s3).store()
    with pytest.raises(dg.DagsterInvalidConfigError, match="the s3 object store needs a dagster_aws"):
        ObjectStoreResource(backend="s3", bucket="b").store()
    with pytest.raises(dg.DagsterInvalidConfigError, match="needs a dagster_aws.s3.S3Resource"):
        FeatureStoreResource(registry="r", offline_dir="s3://b/o", s3=not_s3).settings()


def test_the_redis_online_store_gets_a_timeout_and_no_retries_unless_its_connection_sets_them():
    from feast.infra.online_stores.redis import RedisOnlineStore

    from resources.stores import FeatureStoreResource

    def connection(**fields) -> str:
        settings = FeatureStoreResource(registry="r", offline_dir="o", online_type="redis", **fields).settings()
        return settings.online["connection_string"]

    plain = connection(online_connection="redis:6379")
    assert plain == "redis:6379,socket_connect_timeout=30.0,socket_timeout=30.0,retry=null"
    # what Feast hands to redis.Redis: numbers, and None for retry (no retries)
    assert RedisOnlineStore._parse_connection_string(plain) == (
        [{"host": "redis", "port": "6379"}], {"socket_connect_timeout": 30.0, "socket_timeout": 30.0, "retry": None})
    # an operator's own settings win; the rest are added
    assert connection(online_connection="redis:6379,password=s3cr=t,socket_timeout=5", online_timeout_s=2) == \
        "redis:6379,password=s3cr=t,socket_timeout=5,socket_connect_timeout=2.0,retry=null"
    for bad in ("", "password=s3cr=t,redis:6379"):
        with pytest.raises(dg.DagsterInvalidConfigError, match="starts with host:port.*DATACREEK_FEAST_REDIS") as err:
            connection(online_connection=bad)
        assert "s3cr" not in str(err.value)  # a password in a misordered string is not echoed
    for timeout in (0, -1, float("inf"), float("nan")):
        with pytest.raises(dg.DagsterInvalidConfigError, match="online_timeout_s must be a number of seconds above 0"):
            connection(online_connection="redis:6379", online_timeout_s=timeout)


def test_nothing_is_read_from_the_environment_at_import(monkeypatch):
    env = {**os.environ, "DATACREEK_PROFILE": "no-such-profile"}
    code = "import definitions, datacreek_assets.defs, resources; print('imported')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr
    monkeypatch.setenv("DATACREEK_PROFILE", "no-such-profile")
    with pytest.raises(ConfigError):  # read when the definitions are built
        build_definitions()


def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "DATACREEK_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
