"""One factory: the profile decides where each store lives.

Called at definition-build time (and by the CLI), never at import.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import dagster as dg

from datacreek_assets.local_services import RayService
from datacreek_assets.settings import ConfigError, LocalSettings
from datacreek_assets.tenant_lifecycle import TenantStores
from resources.stores import (
    CreditLedgerResource,
    CurationResource,
    EventLogResource,
    FeatureStoreResource,
    FineTuneResource,
    GraphStoreResource,
    HotGraphResource,
    MlflowTrackingResource,
    ObjectStoreResource,
    ServingResource,
    TenantRegistryResource,
)


def build_resources(profile: str, settings: LocalSettings | None = None) -> dict[str, dg.ConfigurableResource]:
    if profile == "local":
        settings = settings or LocalSettings.from_env()
        mlflow = MlflowTrackingResource(tracking_uri=f"sqlite:///{settings.state_dir / 'mlflow' / 'mlflow.db'}",
                                        artifact_root=str(settings.state_dir / "mlflow" / "artifacts"),
                                        ui_url="http://127.0.0.1:5000")  # `mlflow ui` (README: Configuration)
        return {
            "graph_store": GraphStoreResource(uri=settings.neo4j_uri, isolation="label"),
            "hot_graph": HotGraphResource(host="127.0.0.1", port=settings.falkordb_port),
            "event_log": EventLogResource(bootstrap_servers=f"127.0.0.1:{settings.kafka_port}",
                                          stream_rest_url=f"http://127.0.0.1:{settings.flink_rest_port}",
                                          signing_secret=settings.event_signing_secret(),
                                          tenant_bootstrap_servers=f"127.0.0.1:{settings.kafka_tenant_port}"),
            "object_store": ObjectStoreResource(backend="local", root=str(settings.object_store_root)),
            "tenant_registry": TenantRegistryResource(url=settings.registry_url),
            "feature_store": FeatureStoreResource(
                registry=str(settings.state_dir / "feast" / "registry.db"),
                offline_dir=str(settings.state_dir / "feast" / "offline"),
                online_type="sqlite",
                online_path=str(settings.state_dir / "feast" / "online.db"),
            ),
            "credit_ledger": CreditLedgerResource(url=settings.ledger_url),
            "curation": CurationResource(url=settings.curation_url),
            "mlflow": mlflow,
            "finetune": FineTuneResource(
                models_dir=str(settings.state_dir / "models"),
                base_cache_dir=str(settings.download_cache / "models"),
                mlflow=mlflow,
                base_model=settings.base_model,
                eval_margin=settings.eval_margin,
                cpu_fallback=settings.cpu_fallback,
                launcher=settings.training_launcher,
            ),
            "serving": ServingResource(
                ray_address=f"127.0.0.1:{settings.ray_port}",
                http_port=settings.serve_port,
                store_url=settings.serving_url,
                admin_token=settings.serving_admin_token(),
                ray_auth_token_path=str(RayService(settings).auth_token_path),
                min_requests=settings.canary_min_requests,
                promote_after_s=settings.canary_promote_after_s,
                promote_min_requests=settings.canary_promote_min_requests,
                min_p99_gap_ms=settings.canary_min_p99_gap_ms,
                models_dir=str(settings.state_dir / "models"),
                object_store=ObjectStoreResource(backend="local", root=str(settings.object_store_root)),
                model_cache_dir=str(settings.state_dir / "serving" / "model-cache"),
            ),
        }
    if profile == "prod":
        # Real endpoints; values are resolved by Dagster when a run starts.
        s3 = s3_resource_from_env()
        mlflow = MlflowTrackingResource(
            tracking_uri=dg.EnvVar("DATACREEK_MLFLOW_TRACKING_URI"),
            artifact_root=dg.EnvVar("DATACREEK_MLFLOW_ARTIFACT_ROOT"),  # s3://bucket/mlflow
            ui_url=optional_env("DATACREEK_MLFLOW_UI_URL"),  # where operators open the tracking server
        )
        return {
            "graph_store": GraphStoreResource(
                uri=dg.EnvVar("DATACREEK_NEO4J_URI"),
                user=dg.EnvVar("DATACREEK_NEO4J_USER"),
                password=dg.EnvVar("DATACREEK_NEO4J_PASSWORD"),
                isolation=dg.EnvVar("DATACREEK_NEO4J_ISOLATION"),
            ),
            "hot_graph": HotGraphResource(
                host=dg.EnvVar("DATACREEK_FALKORDB_HOST"),
                port=dg.EnvVar.int("DATACREEK_FALKORDB_PORT"),
                username=dg.EnvVar("DATACREEK_FALKORDB_USER"),  # "default", or the tenant's ACL user
                password=dg.EnvVar("DATACREEK_FALKORDB_PASSWORD"),
            ),
            "event_log": EventLogResource(
                bootstrap_servers=dg.EnvVar("DATACREEK_KAFKA_BOOTSTRAP"),  # a tenant's pods: the tenant listener
                stream_rest_url=dg.EnvVar("DATACREEK_FLINK_REST_URL"),
                signing_secret=dg.EnvVar("DATACREEK_EVENT_SIGNING_SECRET"),  # "" in a tenant's pods
                tenant_bootstrap_servers=dg.EnvVar("DATACREEK_KAFKA_TENANT_BOOTSTRAP"),
                username=dg.EnvVar("DATACREEK_KAFKA_USERNAME"),  # "" for the platform, or tenant-<id>
                password=dg.EnvVar("DATACREEK_KAFKA_PASSWORD"),
                signing_key=dg.EnvVar("DATACREEK_EVENT_SIGNING_KEY"),  # a tenant's pods only
            ),
            "s3": s3,
            "object_store": ObjectStoreResource(backend="s3", bucket=dg.EnvVar("DATACREEK_S3_BUCKET"), s3=s3),
            "tenant_registry": TenantRegistryResource(url=dg.EnvVar("DATACREEK_POSTGRES_URL")),
            "feature_store": FeatureStoreResource(
                registry=dg.EnvVar("DATACREEK_FEAST_REGISTRY"),  # s3://bucket/feast/registry.db
                offline_dir=dg.EnvVar("DATACREEK_FEAST_OFFLINE_URI"),  # s3://bucket/feast/offline
                online_type="redis",
                online_connection=dg.EnvVar("DATACREEK_FEAST_REDIS"),
                s3=s3,
            ),
            "credit_ledger": CreditLedgerResource(url=dg.EnvVar("DATACREEK_LEDGER_URL")),  # Postgres
            "curation": CurationResource(url=dg.EnvVar("DATACREEK_CURATION_STORE_URL")),  # Postgres
            "mlflow": mlflow,
            "finetune": FineTuneResource(
                models_dir=dg.EnvVar("DATACREEK_MODELS_DIR"),  # the run pod's volume
                base_cache_dir=dg.EnvVar("DATACREEK_BASE_MODELS_DIR"),
                mlflow=mlflow,
                base_model=dg.EnvVar("DATACREEK_BASE_MODEL"),
                cpu_fallback=dg.EnvVar("DATACREEK_CPU_FALLBACK"),
                launcher=optional_env("DATACREEK_TRAINING_LAUNCHER") or "auto",
            ),
            "serving": ServingResource(
                # the Ray Client and the router's admin token: the platform's pods only (tenants'
                # release steps go to the control API below)
                ray_address=optional_env("DATACREEK_RAY_ADDRESS"),
                http_port=dg.EnvVar.int("DATACREEK_SERVE_PORT"),
                http_host="0.0.0.0",
                replica_cpus=1.0,  # one llama.cpp thread: model replicas go to the RayCluster's workers
                pool_max_replicas=dg.EnvVar.int("DATACREEK_SERVING_POOL_MAX_REPLICAS"),
                router_url=dg.EnvVar("DATACREEK_ROUTER_URL"),  # the Serve proxy's service, as Dagster pods see it
                store_url=dg.EnvVar("DATACREEK_SERVING_STORE_URL"),  # Postgres
                admin_token=optional_env("DATACREEK_SERVING_ADMIN_TOKEN"),
                models_dir=dg.EnvVar("DATACREEK_MODELS_DIR"),  # the volume the Ray workers mount too
                object_store=ObjectStoreResource(backend="s3", bucket=dg.EnvVar("DATACREEK_S3_BUCKET"), s3=s3),
                model_cache_dir=dg.EnvVar("DATACREEK_MODEL_CACHE_DIR"),  # each Ray worker's local disk
                model_cache_gb=dg.EnvVar.int("DATACREEK_MODEL_CACHE_GB"),
                # tenants' pods: the control API and their token; the platform's: the secret the
                # API checks tokens with
                control_url=optional_env("DATACREEK_SERVING_CONTROL_URL"),
                control_token=optional_env("DATACREEK_SERVING_CONTROL_TOKEN"),
                control_secret=optional_env("DATACREEK_SERVING_CONTROL_SECRET"),
            ),
        }
    raise ConfigError(f"unknown profile {profile!r}")


# S3Resource's settings and the variables they come from. Each one is optional: without a variable the
# setting is left to boto3's default chain (AWS_REGION, AWS_PROFILE, the pod's web identity token).
S3_SETTINGS = {
    "endpoint_url": "DATACREEK_S3_ENDPOINT_URL",  # MinIO, moto, any S3 API; unset for AWS itself
    "region_name": "DATACREEK_S3_REGION",
    "profile_name": "DATACREEK_S3_PROFILE",
    "aws_access_key_id": "DATACREEK_S3_ACCESS_KEY_ID",
    "aws_secret_access_key": "DATACREEK_S3_SECRET_ACCESS_KEY",
    "aws_session_token": "DATACREEK_S3_SESSION_TOKEN",
}


def optional_env(name: str, environ: dict[str, str] | None = None):
    """An EnvVar where the variable is set (non-empty), else "": the value stays out of the run config
    that the UI shows, and is read when a run starts."""
    import os

    env = os.environ if environ is None else environ
    return dg.EnvVar(name) if env.get(name) else ""


def s3_resource_from_env(environ: dict[str, str] | None = None):
    """dagster-aws's S3Resource from the variables that are set."""
    from dagster_aws.s3 import S3Resource

    settings = {setting: optional_env(name, environ) for setting, name in S3_SETTINGS.items()}
    return S3Resource(**{setting: value for setting, value in settings.items() if value})


def initialized(resources: dict[str, dg.ConfigurableResource],
                stack: ExitStack) -> dict[str, dg.ConfigurableResource]:
    """Resolve EnvVars outside a Dagster run (the CLI); every unset variable is named in one line.
    Resources that hold others (the S3Resource, MLflow's) are set up as Dagster does, as context
    managers: ``stack`` tears them down."""
    import re

    done, missing, other = {}, [], []
    for name, resource in resources.items():
        try:
            done[name] = stack.enter_context(resource.process_config_and_initialize_cm())
        except dg.DagsterError as err:
            unset = re.findall(r'environment variable "(\w+)"', str(err))
            missing.extend(v for v in unset if v not in missing)
            if not unset:
                other.append(f"{name}: {str(err).splitlines()[0]}")
    if missing or other:
        problems = ([f"{', '.join(missing)} not set"] if missing else []) + other
        raise ConfigError(f"resource configuration is incomplete: {'; '.join(problems)}")
    return done


@contextmanager
def open_tenant_stores(resources: dict[str, dg.ConfigurableResource]) -> Iterator[TenantStores]:
    """Open every store a tenant lives in (for the CLI and onboarding)."""
    registry = resources["tenant_registry"].registry()
    serving = resources["serving"].control() if "serving" in resources else None
    try:
        with resources["graph_store"].admin() as graph:
            yield TenantStores(
                registry=registry,
                graph=graph,
                hot_graph=resources["hot_graph"].store(),
                objects=resources["object_store"].store(),
                features=resources["feature_store"].for_tenant if "feature_store" in resources else None,
                finetune=resources.get("finetune"),
                ledger=resources["credit_ledger"].ledger() if "credit_ledger" in resources else None,
                serving=serving,
                curation=resources.get("curation"),
            )
    finally:
        registry.close()
        if serving is not None:
            serving.close()
