"""ConfigurableResources for the stores. They hold configuration and open
clients; what is done with the clients lives in ``datacreek_assets``."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional

import dagster as dg
from pydantic import PrivateAttr

from datacreek_assets.graph_store import ISOLATION_MODES, GraphAdmin, TenantGraph
from datacreek_assets.hot_graph import FALKORDB_TIMEOUT_S, HotGraphStore, connect_hot_graph
from datacreek_assets.local_services import ServiceError
from datacreek_assets.object_store import LocalObjectStore, S3ObjectStore, TenantObjectStore
from datacreek_assets.tenant_registry import TenantRegistry


class GraphStoreResource(dg.ConfigurableResource):
    """Neo4j. ``isolation='label'`` for Community (one user database),
    ``'database'`` for Enterprise/Aura (one database per tenant)."""

    uri: str
    user: str = ""
    password: str = ""
    isolation: str = "label"
    migrations_dir: str = ""  # versioned Cypher migrations; empty: the project's db/migration

    @contextmanager
    def admin(self) -> Iterator[GraphAdmin]:
        from neo4j import GraphDatabase
        from neo4j.exceptions import ServiceUnavailable, AuthError

        if self.isolation not in ISOLATION_MODES:
            raise dg.DagsterInvalidConfigError(
                f"graph store isolation must be one of {ISOLATION_MODES}", [], self.isolation
            )
        auth = (self.user, self.password) if self.user else None
        # Unknown-property notices ("deleted_at is not in the database" on a fresh
        # graph) are expected for optional properties: keep the log readable.
        driver = GraphDatabase.driver(self.uri, auth=auth, notifications_min_severity="OFF")
        try:
            try:
                driver.verify_connectivity()
            except (ServiceUnavailable, OSError) as err:
                raise ServiceError(
                    f"Neo4j is not reachable at {self.uri} ({err.__class__.__name__}); "
                    "locally, start it with `datacreek services up`"
                ) from None
            except AuthError:
                raise ServiceError(f"Neo4j at {self.uri} refused the configured credentials") from None
            yield GraphAdmin(driver, self.isolation, self.migrations_dir or None)
        finally:
            driver.close()

    @contextmanager
    def tenant(self, tenant_id: str) -> Iterator[TenantGraph]:
        with self.admin() as admin:
            yield admin.tenant(tenant_id)


class HotGraphResource(dg.ConfigurableResource):
    """FalkorDB (one graph per tenant)."""

    host: str = "127.0.0.1"
    port: int = 6380
    username: str = ""  # a tenant's pods connect as its ACL user (tenant-<id>); "" is Redis's default user
    password: str = ""
    timeout_s: float = FALKORDB_TIMEOUT_S  # the longest one call waits on a FalkorDB that does not answer

    def store(self) -> HotGraphStore:
        return connect_hot_graph(self.host, self.port, self.username, self.password, self.timeout_s)


class EventLogResource(dg.ConfigurableResource):
    """Kafka: the tenant-keyed graph events topic; and the Flink REST API of the stream job that
    folds them into the hot graphs (its health)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    timeout_s: float = 10.0  # the longest a run or command waits on an unreachable broker
    replication_factor: int = 1  # of the topics it creates; a production cluster wants 3
    stream_rest_url: str = "http://127.0.0.1:8081"
    # the platform's: its secret signs any tenant's events; tenants' pods get neither of these
    signing_secret: str = ""
    tenant_bootstrap_servers: str = ""  # the listener tenants' pods reach, with their SCRAM users
    # a tenant's pods: its Kafka user (tenant-<id>) and signing key (``tenant_credentials``)
    username: str = ""
    password: str = ""
    signing_key: str = ""

    def event_log(self):
        from datacreek_assets.streaming.event_auth import EventSigner
        from datacreek_assets.streaming.events import EventLog
        from datacreek_assets.tenant_credentials import tenant_of_kafka_user

        tenant = tenant_of_kafka_user(self.username) if self.username else ""
        signer = EventSigner.from_settings(self.signing_secret, self.signing_key, tenant)
        return EventLog(self.bootstrap_servers, self.timeout_s, self.replication_factor, self.username,
                        self.password, signer)


def s3_resource(value, needed_by: str):
    """The nested ``s3`` field, checked to be dagster-aws's S3Resource (it is typed by its base class)."""
    from dagster_aws.s3 import S3Resource

    if not isinstance(value, S3Resource):
        raise dg.DagsterInvalidConfigError(f"{needed_by} needs a dagster_aws.s3.S3Resource as s3, not "
                                           f"{type(value).__name__}", [], str(value))
    return value


class ObjectStoreResource(dg.ConfigurableResource):
    """``backend='local'`` (a directory) or ``'s3'``: a bucket reached through dagster-aws's
    ``S3Resource``, which holds the endpoint, region, credentials and profile."""

    backend: str = "local"
    root: str = ".datacreek/objects"
    bucket: str = ""
    # a dagster_aws.s3.S3Resource; typed by its base class so that loading the code location does
    # not import dagster-aws (~1 s, paid by every run and step process) where no S3 is configured
    s3: Optional[dg.ConfigurableResource] = None

    def store(self):
        if self.backend == "local":
            return LocalObjectStore(self.root)
        if self.backend == "s3":
            if not self.bucket:
                raise dg.DagsterInvalidConfigError("the s3 object store needs a bucket", [], self.bucket)
            return S3ObjectStore(self.bucket, s3_resource(self.s3, "the s3 object store").get_client())
        raise dg.DagsterInvalidConfigError(
            f"object store backend must be 'local' or 's3', not {self.backend!r}", [], self.backend
        )

    def for_tenant(self, tenant_id: str) -> TenantObjectStore:
        return TenantObjectStore(self.store(), tenant_id)

    def model_source(self, cache_dir: str, cache_max_bytes: int = 0):
        """This store as serving replicas rebuild it to fetch model files (``serving.model_files``)."""
        from pathlib import Path

        from datacreek_assets.serving.model_files import ModelSource

        if self.backend == "s3":
            s3 = s3_resource(self.s3, "the s3 model store")
            return ModelSource("s3", cache_dir, bucket=self.bucket, endpoint_url=s3.endpoint_url or "",
                               region=s3.region_name or "", cache_max_bytes=cache_max_bytes)
        # absolute: replicas run in Ray's worker processes, whose working directory is not ours
        return ModelSource(self.backend, cache_dir, root=str(Path(self.root).resolve()), cache_max_bytes=cache_max_bytes)

    def ensure_lifecycle(self):
        """Apply the bucket's ingest-toxic/ expiry rule (deploy time); None for a directory, which
        has no lifecycle: there the retention audit alone enforces it."""
        from datacreek_assets.retention.lifecycle import ensure_toxic_expiry

        store = self.store()
        if not isinstance(store, S3ObjectStore):
            return None
        return ensure_toxic_expiry(store.client, store.bucket)


class TenantRegistryResource(dg.ConfigurableResource):
    """SQLAlchemy URL of the tenant registry (SQLite locally, Postgres in prod)."""

    url: str

    def registry(self) -> TenantRegistry:
        return TenantRegistry(self.url)


class FeatureStoreResource(dg.ConfigurableResource):
    """Feast. Local: parquet offline store and SQLite online store under the state dir.
    Prod: S3 offline prefix and Redis online store."""

    registry: str
    offline_dir: str
    online_type: str = "sqlite"  # sqlite | redis
    online_path: str = ""  # sqlite file
    online_connection: str = ""  # redis "host:port[,password=...]"
    online_timeout_s: float = 30.0  # redis: connect and command timeout, unless the connection string sets them
    s3: Optional[dg.ConfigurableResource] = None  # for an s3:// offline_dir: the object store's S3Resource

    def settings(self):
        from datacreek_assets.embeddings.feature_store import FeatureStoreSettings, redis_connection_string

        if self.online_type == "sqlite":
            online = {"type": "sqlite", "path": self.online_path}
        elif self.online_type == "redis":
            if not (math.isfinite(self.online_timeout_s) and self.online_timeout_s > 0):
                raise dg.DagsterInvalidConfigError(f"feature store: online_timeout_s must be a number of seconds "
                                                   f"above 0, not {self.online_timeout_s}", [], self.online_timeout_s)
            try:
                connection = redis_connection_string(self.online_connection, self.online_timeout_s)
            except ValueError as err:  # the connection string (not echoed: it may hold a password)
                raise dg.DagsterInvalidConfigError(f"feature store: {err} (online_connection, DATACREEK_FEAST_REDIS)",
                                                   [], None) from None
            online = {"type": "redis", "connection_string": connection}
        else:
            raise dg.DagsterInvalidConfigError(f"online store must be sqlite or redis, not {self.online_type!r}", [], self.online_type)
        s3 = s3_resource(self.s3, "an s3:// feature store") if self.s3 is not None else None
        return FeatureStoreSettings(registry=self.registry, offline_dir=self.offline_dir, online=online,
                                    s3_endpoint=(s3.endpoint_url or "") if s3 else "",
                                    s3_region=(s3.region_name or "") if s3 else "",
                                    s3_credentials=(s3.aws_access_key_id, s3.aws_secret_access_key,
                                                    s3.aws_session_token) if s3 and s3.aws_access_key_id else None)

    def for_tenant(self, tenant_id: str, metrics=None, view: str = "chunk_embeddings"):
        from datacreek_assets.embeddings.feature_store import TenantFeatures, open_feature_store

        settings = self.settings()
        return TenantFeatures(open_feature_store(settings), settings, tenant_id, metrics, view=view)


class MlflowTrackingResource(dg.ConfigurableResource):
    """MLflow: the tracking store, the artifact root and, where a tracking server runs, its UI
    address (materializations link to their MLflow run there).

    ``for_tenant`` gives the tenant-scoped handle: one experiment per tenant, and a run id of another
    tenant refused. dagster-mlflow's own ``mlflow_tracking`` resource is not used for that: it binds
    one experiment for the whole code location through MLflow's process-global fluent state, while
    here the experiment follows each run's tenant partition. This resource is what the integration's
    ``end_mlflow_on_run_finished`` hook calls (``end_run``), under the resource key ``mlflow``."""

    tracking_uri: str
    artifact_root: str
    ui_url: str = ""
    _dagster_run_id: str = PrivateAttr(default="")
    _partition: str = PrivateAttr(default="")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None:  # the step's run: the hook ends what this Dagster run opened
            self._dagster_run_id = run.run_id
            self._partition = run.tags.get("dagster/partition", "")

    def for_tenant(self, tenant_id: str, create: bool = True):
        """The tenant's handle; ``create=False`` raises NoExperiment rather than make the experiment."""
        from datacreek_assets.finetune.tracking import TenantTracking

        return TenantTracking(self.tracking_uri, self.artifact_root, tenant_id, create=create)

    def end_run(self, status: str = "FINISHED") -> int:
        """End the MLflow runs this Dagster run opened in its tenant's experiment and left running
        (how the integration's hook closes a run when a step fails, or its job's last step ends)."""
        return self.end_runs_of(self._partition, self._dagster_run_id, status)

    def end_runs_of(self, partition: str, dagster_run_id: str, status: str) -> int:
        """End what a Dagster run of this tenant partition left RUNNING; a partition that is not a
        tenant, or a tenant without an experiment, has none (and gets no experiment made for it)."""
        from datacreek_assets.finetune.tracking import NoExperiment
        from datacreek_assets.tenancy import InvalidTenantId

        try:
            tracking = self.for_tenant(partition, create=False)
        except (InvalidTenantId, NoExperiment):
            return 0
        return tracking.end_runs_of(dagster_run_id, status)

    def run_url(self, tracking, run_id: str) -> str:
        """The run's page in the MLflow UI ("" without a UI address)."""
        if not self.ui_url:
            return ""
        return f"{self.ui_url.rstrip('/')}/#/experiments/{tracking.experiment_id}/runs/{run_id}"


class FineTuneResource(dg.ConfigurableResource):
    """Where models are trained and tracked: a work directory (base checkpoints, adapters,
    GGUF files), MLflow, the base model, the CPU fallback ("int8": the base in 8-bit through
    bitsandbytes, or "fp32") and the release margin of qa_eval."""

    models_dir: str
    base_cache_dir: str  # converted base checkpoints and base GGUF files, shared by tenants
    mlflow: MlflowTrackingResource
    base_model: str = "smollm2-135m-instruct"
    cpu_fallback: str = "int8"
    launcher: str = "auto"  # settings.LAUNCHERS: how a training starts (finetune/launch.py)
    eval_margin: float = 0.02
    eval_questions: int = 40
    threads: int = 2

    def tenant_dir(self, tenant_id: str):
        from pathlib import Path

        from datacreek_assets.tenancy import validate_tenant_id

        return Path(self.models_dir) / "tenants" / validate_tenant_id(tenant_id)

    def base_dir(self):
        from pathlib import Path

        return Path(self.base_cache_dir)

    def tracking(self, tenant_id: str):
        return self.mlflow.for_tenant(tenant_id)


class CreditLedgerResource(dg.ConfigurableResource):
    """The credit ledger (SQLAlchemy URL) and how GPU / CPU-fallback steps are metered."""

    url: str
    trial_credits: float = 100.0  # granted when a tenant's account is opened
    gpu_price: float = 1.0  # credits per GPU-minute, until set per tenant
    cpu_price: float = 0.1  # credits per CPU-fallback minute
    heartbeat_s: float = 5.0  # billing granularity of a killed step

    def ledger(self):
        from datacreek_assets.billing.ledger import CreditLedger

        return CreditLedger(self.url, self.trial_credits, self.gpu_price, self.cpu_price)

    @contextmanager
    def metered(self, context, tenant_id: str, gpus: int):
        """Meter a step: GPU-minutes x GPUs when ``gpus`` > 0, else CPU-fallback minutes.
        Running out of credits fails the step and tags the run ``datacreek/status=failed_quota``."""
        from datacreek_assets.billing.ledger import QuotaExceeded
        from datacreek_assets.billing.meter import FAILED_QUOTA, STATUS_TAG, Meter, step_process_started_ms

        resource, units = ("gpu", gpus) if gpus > 0 else ("cpu", 1)
        step = getattr(context, "op_execution_context", context).op_def.name
        try:
            with Meter(self.ledger(), tenant_id, context.run.run_id, str(step), resource, units,
                       self.heartbeat_s, started_ms=step_process_started_ms()) as meter:
                yield meter
                meter.check()
        except QuotaExceeded as err:
            context.instance.add_run_tags(context.run.run_id, {STATUS_TAG: FAILED_QUOTA})
            # not retried: a retry would only meet the same empty balance
            raise dg.Failure(str(err), metadata={"status": FAILED_QUOTA, "tenant": tenant_id},
                             allow_retries=False) from err


class CurationResource(dg.ConfigurableResource):
    """The curator loop's SQL store (SQLAlchemy URL): the review queues, curator keys, each tenant's
    τ and `edge_repair_log`; and the queue's defaults."""

    url: str
    tau: float = 1e-4  # Δλ a fact needs to be queued, until a tenant's own is set
    queue_limit: int = 500

    def review_store(self):
        from datacreek_assets.curation.review_store import ReviewStore

        return ReviewStore(self.url)

    def repair_log(self):
        from datacreek_assets.curation.repair_log import RepairLog

        return RepairLog(self.url)


class ServingResource(dg.ConfigurableResource):
    """Ray Serve (the cluster's GCS address), the router's port, the release store (SQLAlchemy
    URL), the router's admin token, and the canary policy the health sensor applies."""

    ray_address: str
    http_port: int
    store_url: str
    admin_token: str
    ray_auth_token_path: str = ""  # Ray's token file; empty: Ray's own default (~/.ray/auth_token)
    http_host: str = "127.0.0.1"  # where Serve's HTTP proxy listens (0.0.0.0 in a cluster)
    router_url: str = ""  # how the control plane reaches the router; empty: http://127.0.0.1:<http_port>
    canary_weight: float = 0.05
    window_s: float = 60.0
    min_requests: int = 20
    max_p99_ratio: float = 2.0
    min_p99_gap_ms: float = 25.0  # below this absolute gap a p99 ratio is noise, not a regression
    promote_after_s: float = 300.0
    promote_min_requests: int = 100
    max_prompt_chars: int = 8000
    n_ctx: int = 2048  # grounded prompts: three passages, the question and the answer
    threads: int = 1  # llama.cpp threads per model replica
    # CPUs Ray reserves per model replica: 0 packs every replica on one local head; in a cluster
    # (1 per thread) the head, started with num-cpus 0, takes none and the autoscaler adds workers
    replica_cpus: float = 0.0
    pool_max_replicas: int = 1  # replicas per base model's pool: Serve adds them as requests queue
    # router replicas: each takes a share of the requests; the canary is judged over all of them
    router_replicas: int = 2
    models_dir: str = ""  # the tenants' retrieval indexes (FineTuneResource.models_dir); empty: no retrieval
    # where released GGUF files are published (by SHA-256) and replicas fetch them from; S3
    # credentials come from each replica's own environment
    object_store: Optional[ObjectStoreResource] = None
    model_cache_dir: str = ""  # each node's cache of fetched model files
    model_cache_gb: int = 0  # GiB: least recently used files are evicted past it; 0: no limit
    # the serving control API (`datacreek serving control-api`, platform namespace): where tenants'
    # release steps go in a cluster instead of Ray, with their token (DATACREEK_SERVING_CONTROL_TOKEN,
    # from `datacreek tenant credentials`); empty: release steps drive Ray themselves (local)
    control_url: str = ""
    control_token: str = ""
    control_secret: str = ""  # the platform's: the API derives and checks each tenant's token from it

    def control(self):
        from datacreek_assets.serving.control import ServingControl

        if not (self.ray_address and self.admin_token):
            raise dg.DagsterInvalidConfigError(
                "serving needs DATACREEK_RAY_ADDRESS and DATACREEK_SERVING_ADMIN_TOKEN here (the platform's pods; "
                "a tenant's release steps go through DATACREEK_SERVING_CONTROL_URL)", [], self.ray_address)
        source = (self.object_store.model_source(self.model_cache_dir, self.model_cache_gb * 2**30)
                  if self.object_store is not None else None)
        return ServingControl(self.ray_address, self.http_port, self.store_url, self.admin_token,
                              self.ray_auth_token_path or None, self.window_s, self.max_prompt_chars, self.n_ctx,
                              self.threads, self.http_host, self.router_url, self.models_dir, source,
                              self.replica_cpus, self.pool_max_replicas, self.router_replicas,
                              self.canary_weight, self.policy())

    def releases(self, tenant_id: str):
        """What a tenant's release step changes the serving through: the control API where one is
        configured (its Ray, router and release store stay the platform's), else `control()`."""
        if not self.control_url:
            return self.control()
        from datacreek_assets.serving.control_client import ServingControlClient

        if self.object_store is None:
            raise dg.DagsterInvalidConfigError("the serving control API needs the object store its release steps "
                                               "upload to (ServingResource.object_store)", [], self.control_url)
        return ServingControlClient(self.control_url, self.control_token, self.object_store.store(), tenant_id)

    def store(self):
        """The release store alone (keys, releases): no Ray connection."""
        from datacreek_assets.serving.release_store import ServingStore

        return ServingStore(self.store_url)

    def policy(self):
        from datacreek_assets.serving.routing import CanaryPolicy

        return CanaryPolicy(self.min_requests, self.max_p99_ratio, self.min_p99_gap_ms / 1000.0,
                            self.promote_after_s, self.promote_min_requests)
