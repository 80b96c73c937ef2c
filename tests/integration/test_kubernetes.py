"""Kubernetes manifests, offline: render (helm), validate (kubernetes-validate, strict), analyse
network isolation (network-config-analyzer), and inspect the Job dagster-k8s builds for a GPU step."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from datacreek_assets import kubernetes as k8s
from datacreek_assets.settings import LocalSettings

REPO = Path(__file__).resolve().parents[2]
TENANTS = ["acme", "globex"]


@pytest.fixture(scope="module")
def helm() -> Path:
    return k8s.helm_binary(LocalSettings.from_env().download_cache)


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {t: k8s.render_tenant(helm, k8s.tenant_values(t)) for t in TENANTS}


@pytest.fixture(scope="module")
def serving_chart(helm) -> list[dict]:
    return k8s.render_serving(helm)


def kinds(docs):
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def test_the_tenant_chart_renders_valid_manifests(rendered):
    docs = rendered["acme"]
    assert kinds(docs) == sorted([
        "Namespace/tenant-acme", "ResourceQuota/tenant-quota", "LimitRange/tenant-limits",
        "NetworkPolicy/default-deny", "NetworkPolicy/allow-same-namespace", "NetworkPolicy/allow-dns",
        "NetworkPolicy/allow-platform", "ServiceAccount/datacreek-run", "Role/datacreek-run",
        "RoleBinding/datacreek-run", "RoleBinding/dagster-launcher", "ConfigMap/dagster-instance",
        "NetworkPolicy/allow-egress-outside-cluster", "PersistentVolumeClaim/datacreek-models"])
    assert all(d["metadata"].get("namespace", "tenant-acme") == "tenant-acme" for d in docs)
    assert all(d["metadata"]["labels"]["datacreek/tenant"] == "acme" for d in docs)
    quota = next(d for d in docs if d["kind"] == "ResourceQuota")["spec"]["hard"]
    assert quota["requests.nvidia.com/gpu"] == "1" and quota["pods"] == "20"
    # run and step pods here read the same instance config as the platform's
    instance = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["dagster.yaml"]
    assert yaml.safe_load(instance) == yaml.safe_load(k8s.INSTANCE_YAML.read_text())
    for tenant in TENANTS:
        assert k8s.validate(rendered[tenant]) == []


def test_the_stream_job_chart_runs_the_job_as_services_up_does(helm, tmp_path):
    """One pod (never two writers), the same module and flags as the local FlinkJobService, the
    platform's Secret, checkpoints on a volume mounted at the job's state dir, its REST API as
    the Service the sensor reads; the image fetches the connector version the service pins."""
    from datacreek_assets.streaming.flink_service import JOB_MODULE, KAFKA_CONNECTOR_VERSION, FlinkJobService

    docs = k8s.render_stream(helm, {"image": "registry.example.com/datacreek-stream:test"})
    assert kinds(docs) == ["Deployment/datacreek-stream", "PersistentVolumeClaim/datacreek-stream-checkpoints",
                           "Service/datacreek-stream"]
    assert k8s.validate(docs) == []
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][1:] == ["-m", JOB_MODULE]
    flags = {arg.split("=", 1)[0] for arg in container["args"]}
    local = FlinkJobService(LocalSettings(state_dir=tmp_path)).command()
    assert {arg for arg in local if arg.startswith("--")} <= flags
    assert container["envFrom"] == [{"secretRef": {"name": "datacreek-prod"}}]
    state_dir = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--state-dir="))
    assert container["volumeMounts"] == [{"name": "checkpoints", "mountPath": state_dir}]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "datacreek-stream-checkpoints"
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 8081
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"flink-sql-connector-kafka/{KAFKA_CONNECTOR_VERSION}/" in dockerfile and "AS stream" in dockerfile


def test_a_broken_manifest_fails_validation(rendered):
    quota = json.loads(json.dumps(next(d for d in rendered["acme"] if d["kind"] == "ResourceQuota")))
    quota["spec"]["hrad"] = quota["spec"].pop("hard")  # a typo strict validation must catch
    limits = json.loads(json.dumps(next(d for d in rendered["acme"] if d["kind"] == "LimitRange")))
    limits["spec"]["limits"][0]["type"] = 7
    errors = k8s.validate([quota, limits])
    assert len(errors) == 2 and "ResourceQuota/tenant-quota" in errors[0]


def test_the_chart_refuses_an_invalid_tenant_id(helm):
    with pytest.raises(k8s.ManifestError, match="lowercase DNS label"):
        k8s.render_tenant(helm, {"tenant": {"id": "Acme_Corp"}})
    with pytest.raises(ValueError):
        k8s.tenant_values("../acme")


def test_nca_proves_tenants_cannot_reach_each_other_but_reach_dns_and_the_platform(rendered, serving_chart):
    policies = rendered["acme"] + rendered["globex"] + serving_chart
    allowed = k8s.connectivity(policies, k8s.model_cluster(TENANTS))
    assert k8s.isolation_violations(allowed, TENANTS) == []
    pairs = {(c.src_ns, c.dst_ns) for c in allowed}
    for tenant in TENANTS:
        ns = f"tenant-{tenant}"
        assert (ns, ns) in pairs  # within the namespace
        assert (ns, k8s.PLATFORM_NAMESPACE) in pairs and (k8s.PLATFORM_NAMESPACE, ns) in pairs
        dns = {c.connection for c in allowed if c.src_ns == ns and c.dst_ns == "kube-system"}
        assert dns and all("53" in c for c in dns)  # DNS only
        # out of the cluster (object store, API server): HTTPS only; nothing comes in from there
        outside = {c.connection for c in allowed if c.src_ns == ns and c.dst_ns == k8s.OUTSIDE}
        assert outside == {"{protocols:TCP,dst_ports:443}"}
        assert not [c for c in allowed if c.src_ns == k8s.OUTSIDE and c.dst_ns == ns]
    assert ("tenant-acme", "tenant-globex") not in pairs
    # the platform's pods: Kafka on its tenant listener only (the platform's authenticates no
    # one), the stream job not at all (its REST API controls the job)
    exposure = k8s.platform_exposure(policies, TENANTS)
    assert exposure == {"dagster": {"All connections"}, "kafka": {"{protocols:TCP,dst_ports:9094}"},
                        "datacreek-stream": set(), "ray": {"{protocols:TCP,dst_ports:8000}"},
                        "datacreek-serving-control": {"{protocols:TCP,dst_ports:8200}"}}
    assert k8s.platform_holes(exposure) == [] and ("tenant-globex", "tenant-acme") not in pairs


def widened(policies: list[dict], namespace: str, direction: str) -> list[dict]:
    """A copy where `namespace`'s same-namespace rule admits every namespace in one direction."""
    policies = json.loads(json.dumps(policies))
    for doc in policies:
        if doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"] == "allow-same-namespace" \
                and doc["metadata"]["namespace"] == namespace:
            key = "from" if direction == "ingress" else "to"
            doc["spec"][direction] = [{key: [{"namespaceSelector": {}}]}]
    return policies


def test_nca_finds_an_isolation_hole(rendered):
    """Controls: both sides of a connection must allow it. One side widened alone opens nothing
    (the other side still denies); both widened is a hole the analysis must report."""
    cluster = k8s.model_cluster(TENANTS)
    policies = rendered["acme"] + rendered["globex"]
    one_side = widened(policies, "tenant-globex", "ingress")
    assert k8s.isolation_violations(k8s.connectivity(one_side, cluster), TENANTS) == []
    both = widened(one_side, "tenant-acme", "egress")
    holes = k8s.isolation_violations(k8s.connectivity(both, cluster), TENANTS)
    assert holes == ["tenant-acme -> tenant-globex: All connections"]
    # an egress rule that opens every port to the outside is reported too
    opened = json.loads(json.dumps(policies))
    for doc in opened:
        if doc["metadata"]["name"] == "allow-egress-outside-cluster" and doc["metadata"]["namespace"] == "tenant-acme":
            del doc["spec"]["egress"][0]["ports"]
    holes = k8s.isolation_violations(k8s.connectivity(opened, cluster), TENANTS)
    assert holes == ["tenant-acme -> <outside the cluster>: All connections"]
    # globex's platform rule without its exclusions: Kafka's every port and the stream job are reported
    unfenced = json.loads(json.dumps(policies))
    for doc in unfenced:
        if doc["metadata"]["name"] == "allow-platform" and doc["metadata"]["namespace"] == "tenant-globex":
            del doc["spec"]["egress"][0]["to"][0]["podSelector"]
    holes = k8s.platform_holes(k8s.platform_exposure(unfenced, TENANTS))
    assert holes == ["tenants -> kafka: All connections", "tenants -> ray: All connections",
                     "tenants -> datacreek-serving-control: All connections",
                     "tenants -> datacreek-stream: All connections"]


@pytest.mark.parametrize("pod, policy", [("ray", "ray-serving"), ("datacreek-serving-control", "serving-control")])
def test_serving_is_fenced_on_both_sides(rendered, serving_chart, pod, policy):
    """Tenants reach Ray's pods on the router's port only (not the Ray Client: a tenant holds no
    Ray credentials), and the serving control API on its port only: the tenant's egress and the
    serving chart's ingress each hold that line alone, and a hole opens only with both gone."""
    def without_fence(policies: list[dict], tenant_side: bool, serving_side: bool) -> list[dict]:
        policies = json.loads(json.dumps(policies))
        for doc in policies:
            name = doc["metadata"]["name"]
            if tenant_side and name == "allow-platform":
                doc["spec"]["egress"] = [doc["spec"]["egress"][0]]  # the catch-all rule, no ports
                doc["spec"]["egress"][0]["to"][0]["podSelector"]["matchExpressions"][0]["values"].remove(pod)
            if serving_side and name == policy:
                del doc["spec"]["ingress"][1]["ports"]
        return policies

    policies = rendered["acme"] + rendered["globex"] + serving_chart
    ports = {"ray": k8s.RAY_TENANT_PORTS, "datacreek-serving-control": k8s.CONTROL_TENANT_PORTS}[pod]
    assert ports in ("{protocols:TCP,dst_ports:8000}", "{protocols:TCP,dst_ports:8200}")
    for tenant_side, serving_side in ((True, False), (False, True)):
        exposure = k8s.platform_exposure(without_fence(policies, tenant_side, serving_side), TENANTS)
        assert exposure[pod] == {ports} and k8s.platform_holes(exposure) == []
    exposure = k8s.platform_exposure(without_fence(policies, True, True), TENANTS)
    assert k8s.platform_holes(exposure) == [f"tenants -> {pod}: All connections"]


def test_the_serving_raycluster_matches_the_kuberay_crd_schema(serving_chart, tmp_path):
    """The serving chart's RayCluster against KubeRay's own CRD (operator v1.5.0, from the Go
    module proxy); its Service and policies against Kubernetes' schemas. Sizes follow what was
    measured: a model replica (SmolLM2 f16 + adapter, n_ctx 2048) holds 405 MiB resident."""
    import jsonschema
    import ray

    found = subprocess.run(["go", "mod", "download", "-json", "github.com/ray-project/kuberay/ray-operator@v1.5.0"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert found.returncode == 0, found.stderr
    crd = yaml.safe_load((Path(json.loads(found.stdout)["Dir"]) / "config/crd/bases/ray.io_rayclusters.yaml").read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    assert kinds(serving_chart) == ["Deployment/datacreek-serving-control", "NetworkPolicy/ray-serving",
                                    "NetworkPolicy/serving-control", "RayCluster/datacreek-serving",
                                    "Service/datacreek-router", "Service/datacreek-serving-control"]
    cluster = next(d for d in serving_chart if d["kind"] == "RayCluster")
    jsonschema.validate(cluster, schema)
    assert k8s.validate([d for d in serving_chart if d["kind"] != "RayCluster"]) == []
    assert all(d["metadata"]["namespace"] == k8s.PLATFORM_NAMESPACE for d in serving_chart)

    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__  # the image's Ray is the one the project pins
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no model replica on the head
    workers = spec["workerGroupSpecs"][0]
    container = workers["template"]["spec"]["containers"][0]
    memory_mib = int(container["resources"]["requests"]["memory"].removesuffix("Gi")) * 1024
    replicas = int(workers["rayStartParams"]["num-cpus"])  # one llama.cpp thread, one CPU per replica
    assert memory_mib >= replicas * 405 + 512  # replicas + the raylet and Serve's proxy
    assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    for pod in (spec["headGroupSpec"]["template"], workers["template"]):
        main = pod["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in main["env"]}
        assert env["RAY_AUTH_MODE"] == "token" and env["OMP_NUM_THREADS"] == "1"
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "ray"  # what the tenants' egress names
        assert {m["mountPath"] for m in main["volumeMounts"]} >= {"/var/cache/datacreek/models", "/etc/ray-auth"}
        assert main["envFrom"] == [{"secretRef": {"name": "datacreek-model-store"}},
                                   {"secretRef": {"name": "datacreek-serving-store"}}]
    broken = json.loads(json.dumps(cluster))
    broken["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_gpu_node_pools_match_the_karpenter_nodepool_schema(tmp_path):
    import jsonschema

    found = subprocess.run(["go", "mod", "download", "-json", "sigs.k8s.io/karpenter@v1.8.0"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
    assert found.returncode == 0, found.stderr
    crd = yaml.safe_load((Path(json.loads(found.stdout)["Dir"]) / "pkg/apis/crds/karpenter.sh_nodepools.yaml").read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    pools = list(yaml.safe_load_all((k8s.REPO / "k8s/nodepools/gpu-nodepools.yaml").read_text()))
    for pool in pools:
        jsonschema.validate(pool, schema)
    spot = next(p for p in pools if p["metadata"]["name"] == "gpu-spot")["spec"]["template"]["spec"]
    assert {"key": "preemptible", "value": "true", "effect": "NoSchedule"} in spot["taints"]
    assert {r["key"]: r["values"] for r in spot["requirements"]}["karpenter.sh/capacity-type"] == ["spot"]
    broken = json.loads(json.dumps(pools[0]))
    broken["spec"]["template"]["spec"]["taints"][0]["effect"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def offline_kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig the step handler's constructor parses; the tests never contact its server."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    return kubeconfig


def prod_step_handler(kubeconfig: Path, **executor_config):
    """The step handler of the prod profile's executor, made the way Dagster makes it for a run."""
    import dagster as dg
    from dagster._config import process_config
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.executor.init import InitExecutorContext

    from datacreek_assets.defs import executor_for

    executor_def = executor_for("prod")
    config = process_config(executor_def.config_schema.config_type, {
        "load_incluster_config": False, "kubeconfig_file": str(kubeconfig),
        "job_image": "registry.example.com/datacreek:0.1.0", **executor_config})
    assert config.success, config.errors

    @dg.job(executor_def=executor_def)
    def probe():
        pass

    with dg.DagsterInstance.ephemeral() as instance:
        context = InitExecutorContext(job=InMemoryJob(probe), executor_def=executor_def,
                                      executor_config=config.value, instance=instance)
        return executor_def.executor_creation_fn(context)._step_handler


def step_handler_for(tmp_path, asset: str, attempt: int):
    """(handler, context, launcher) for `asset`'s step in a run of tenant acme at the given retry
    attempt: the prod executor's step handler, the run launcher as configured in
    k8s/dagster/values.yaml, and the parts of a StepHandlerContext the handler reads."""
    from types import SimpleNamespace

    import dagster as dg
    from dagster._core.execution.plan.state import KnownExecutionState

    from datacreek_assets.defs import build_definitions
    from datacreek_assets.k8s_launcher import TenantNamespaceK8sRunLauncher, TenantNamespaceK8sStepHandler
    from datacreek_assets.tenancy import TENANT_TAG

    kubeconfig = offline_kubeconfig(tmp_path)
    values = yaml.safe_load((REPO / "k8s" / "dagster" / "values.yaml").read_text())
    launcher_config = values["runLauncher"]["config"]["customRunLauncher"]["config"]
    launcher = TenantNamespaceK8sRunLauncher(**{**launcher_config, "load_incluster_config": False,
                                                "kubeconfig_file": str(kubeconfig)})
    handler = prod_step_handler(kubeconfig)
    assert isinstance(handler, TenantNamespaceK8sStepHandler)
    op = build_definitions("prod").resolve_asset_graph().get(dg.AssetKey(asset)).assets_def.op
    step_key = op.name
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id="0123456789abcdef", tags={TENANT_TAG: "acme"})
    context = SimpleNamespace(
        dagster_run=run, instance=SimpleNamespace(run_launcher=launcher), step_tags={step_key: op.tags},
        execute_step_args=SimpleNamespace(run_id=run.run_id, step_keys_to_execute=[step_key],
                                          known_state=KnownExecutionState(previous_retry_attempts={step_key: attempt})),
        get_step_context=lambda key: SimpleNamespace(step=SimpleNamespace(op_name=op.name),
                                                     op_retry_policy=op.retry_policy))
    return handler, context, launcher


def step_job(tmp_path, asset: str, attempt: int) -> dict:
    """The Job the prod executor's step handler builds for `asset`'s step in a run of tenant acme,
    at the given retry attempt: the handler's own container context (the run launcher's, the
    executor's, the op's `dagster-k8s/config` and the tenant's), rendered by dagster-k8s as the
    handler's launch_step does."""
    from dagster_k8s.job import construct_dagster_k8s_job
    from kubernetes.client import ApiClient

    handler, context, launcher = step_handler_for(tmp_path, asset, attempt)
    step_key = context.execute_step_args.step_keys_to_execute[0]
    container = handler._get_container_context(context)
    job_config = container.get_k8s_job_config("registry.example.com/datacreek:0.1.0", launcher)
    job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "dagster-step-0123",
                                    user_defined_k8s_config=container.run_k8s_config, pod_name="dagster-step-0123",
                                    component="step_worker", labels={"dagster/op": step_key})
    doc = ApiClient().sanitize_for_serialization(job)
    doc["metadata"]["namespace"] = container.namespace  # where the handler's create_namespaced_job puts it
    return doc


class RecordedJobs:
    """The Job and pod calls of dagster-k8s's client that the step handler makes, answered from
    Kubernetes objects held here (no API server runs in these tests); deletions are recorded."""

    def __init__(self, jobs: dict):
        self.jobs, self.deleted = jobs, []  # job name -> (V1JobStatus, [V1Pod])

    def get_job_status(self, namespace: str, job_name: str):
        assert namespace == "tenant-acme"
        return self.jobs[job_name][0] if job_name in self.jobs else None

    def get_pods_in_job(self, job_name: str, namespace: str):
        assert namespace == "tenant-acme"
        return self.jobs[job_name][1] if job_name in self.jobs else []

    def delete_job(self, job_name: str, namespace: str):
        assert namespace == "tenant-acme"
        self.deleted.append(job_name)
        return self.jobs.pop(job_name, None) is not None


def pending_job(waited_s: float):
    """A Job whose one pod has found no node for ``waited_s`` seconds, as of now."""
    from kubernetes.client import V1JobStatus

    return V1JobStatus(active=1), [pod("Pending", "False", "Unschedulable", waited_s, now=datetime.now(timezone.utc))]


def test_a_gpu_step_stuck_without_a_node_is_given_up_while_a_lower_rung_is_left(tmp_path):
    handler, context, _ = step_handler_for(tmp_path, "finetuned_adapter", attempt=0)
    name = handler._get_k8s_step_job_name(context)
    handler._api_client = RecordedJobs({name: pending_job(1000)})
    verdict = handler.check_step_health(context)
    assert not verdict.is_healthy and "no node could take GPU Job" in verdict.unhealthy_reason
    handler._api_client = RecordedJobs({name: pending_job(100)})  # under the 900 s limit
    assert handler.check_step_health(context).is_healthy
    handler._api_client = RecordedJobs({name: (pending_job(1000)[0], [pod("Running", "True", None, 1000)])})
    assert handler.check_step_health(context).is_healthy


def test_a_gpu_step_on_its_last_rung_or_without_retries_waits_for_capacity(tmp_path):
    # a CPU step (chunk_embeddings: the embedder runs on CPU) is never given up for lack of GPUs
    handler, context, _ = step_handler_for(tmp_path, "chunk_embeddings", attempt=0)
    handler._api_client = RecordedJobs({handler._get_k8s_step_job_name(context): pending_job(5000)})
    assert handler.check_step_health(context).is_healthy
    # finetuned_adapter's CPU rung asks for no GPU
    handler, context, _ = step_handler_for(tmp_path, "finetuned_adapter", attempt=2)
    handler._api_client = RecordedJobs({handler._get_k8s_step_job_name(context): pending_job(5000)})
    assert handler.check_step_health(context).is_healthy


def test_launching_a_retry_deletes_the_previous_attempts_live_job_only(tmp_path):
    from kubernetes.client import V1JobStatus

    first, first_context, _ = step_handler_for(tmp_path, "finetuned_adapter", attempt=0)
    handler, context, _ = step_handler_for(tmp_path, "finetuned_adapter", attempt=1)
    previous, own = first._get_k8s_step_job_name(first_context), handler._get_k8s_step_job_name(context)
    assert previous != own
    handler._api_client = RecordedJobs({previous: pending_job(1000)})
    assert handler.delete_leftover_jobs(context) == [previous]
    handler._api_client = RecordedJobs({previous: (V1JobStatus(failed=1), [pod("Failed", "True", None, 10)])})
    assert handler.delete_leftover_jobs(context) == []  # an ended Job keeps its logs
    # a restarted run worker relaunches an unhealthy step under the same name: that Job goes first
    handler._api_client = RecordedJobs({own: pending_job(1000)})
    assert handler.delete_leftover_jobs(context) == [own]


def test_the_embedding_step_runs_in_the_tenant_namespace_without_a_gpu(tmp_path):
    """It meters CPU minutes, so its pod holds no GPU (none allocated and unbilled)."""
    doc = step_job(tmp_path, "chunk_embeddings", attempt=0)
    assert k8s.validate([doc]) == []
    pod = doc["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {}) and "nvidia.com/gpu" not in resources.get("requests", {})
    assert resources["requests"]["cpu"] == "4"
    assert not pod.get("tolerations") and not pod.get("affinity")
    assert doc["metadata"]["namespace"] == "tenant-acme" and pod["serviceAccountName"] == "datacreek-run"


@pytest.mark.parametrize("asset", ["finetuned_adapter"])
def test_gpu_step_jobs_run_in_the_tenant_namespace_on_a_gpu_pool_and_are_valid(tmp_path, asset):
    doc = step_job(tmp_path, asset, attempt=0)
    assert k8s.validate([doc]) == []
    pod = doc["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "preemptible", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod["tolerations"]
    affinity = pod["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0] == {"key": "datacreek/gpu-pool", "operator": "In",
                                               "values": ["spot", "on-demand"]}
    preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"]["matchExpressions"][0]
    assert preferred["values"] == ["spot"]  # spot first; an evicted pod's replacement may land on on-demand
    assert pod["restartPolicy"] == "OnFailure" and doc["spec"]["backoffLimit"] == 3
    assert pod["serviceAccountName"] == "datacreek-run" and doc["metadata"]["namespace"] == "tenant-acme"
    assert doc["metadata"]["labels"]["datacreek/tenant"] == "acme"
    # the tenant's model volume and instance config, from the launcher's configuration
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "datacreek-models"
    assert {"name": "models", "mountPath": "/var/lib/datacreek/models"} in container["volumeMounts"]
    assert {"name": "DATACREEK_MODELS_DIR", "value": "/var/lib/datacreek/models"} in container["env"]
    # the platform's secret, then the tenant's own credentials, whose variables win (last source)
    assert container["envFrom"] == [{"secretRef": {"name": "datacreek-prod"}}, {"secretRef": {"name": "datacreek-tenant"}}]
    # secrets the deploy guide copies into every tenant namespace
    password = next(e for e in container["env"] if e["name"] == "DAGSTER_PG_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"


def test_a_gpu_steps_first_retry_requires_on_demand_gpus(tmp_path):
    doc = step_job(tmp_path, "finetuned_adapter", attempt=1)
    assert k8s.validate([doc]) == []
    pod = doc["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert not any(t["key"] == "preemptible" for t in pod["tolerations"])  # spot nodes are off limits
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    affinity = pod["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "datacreek/gpu-pool", "operator": "In", "values": ["on-demand"]}]}]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in affinity
    assert doc["spec"]["template"]["metadata"]["labels"]["datacreek/placement"] == "on-demand"
    assert doc["metadata"]["namespace"] == "tenant-acme"


def test_a_gpu_steps_second_retry_falls_back_to_cpu_in_the_tenant_namespace(tmp_path):
    import dagster as dg

    from datacreek_assets.defs import build_definitions

    op = build_definitions("prod").resolve_asset_graph().get(dg.AssetKey("finetuned_adapter")).assets_def.op
    assert op.retry_policy.max_retries == 2  # spot, then on-demand, then CPU
    doc = step_job(tmp_path, "finetuned_adapter", attempt=2)
    assert k8s.validate([doc]) == []
    pod = doc["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {}) and "nvidia.com/gpu" not in resources.get("requests", {})
    assert resources["limits"]["cpu"] == "8"  # the CPU and memory of the GPU pod stay
    assert not any(t["key"] in ("preemptible", "nvidia.com/gpu") for t in pod.get("tolerations") or [])
    assert "affinity" not in pod or not pod["affinity"]
    assert doc["spec"]["template"]["metadata"]["labels"]["datacreek/placement"] == "cpu-fallback"
    assert doc["metadata"]["namespace"] == "tenant-acme"


NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def pod(phase: str, scheduled: str | None = None, reason: str | None = None, since_s: float = 0.0, now=NOW):
    """A Kubernetes pod object as the API returns it, with its PodScheduled condition (if any),
    that condition last changed ``since_s`` before ``now``."""
    from kubernetes.client import V1Pod, V1PodCondition, V1PodStatus

    since = now - timedelta(seconds=since_s)
    conditions = [V1PodCondition(type="PodScheduled", status=scheduled, reason=reason, last_transition_time=since)] \
        if scheduled else None
    return V1Pod(status=V1PodStatus(phase=phase, conditions=conditions))


def test_a_gpu_pod_counts_as_stuck_only_while_no_node_can_take_it():
    from datacreek_assets.k8s_launcher import unschedulable_seconds

    now = NOW
    assert unschedulable_seconds([pod("Pending", "False", "Unschedulable", 1000)], now) == 1000
    # an evicted predecessor does not count; the replacement's own wait does
    assert unschedulable_seconds([pod("Failed", "True", None, 5000), pod("Pending", "False", "Unschedulable", 30)], now) == 30
    assert unschedulable_seconds([pod("Running", "True", None, 5000)], now) is None
    assert unschedulable_seconds([pod("Pending", "True", None, 5000)], now) is None  # placed, pulling its image
    assert unschedulable_seconds([pod("Pending", "False", "SchedulingGated", 5000)], now) is None
    assert unschedulable_seconds([pod("Pending")], now) is None  # no scheduling verdict yet
    assert unschedulable_seconds([], now) is None


def test_the_prod_executor_configures_how_long_a_gpu_step_may_wait_for_a_node(tmp_path):
    import dagster as dg

    kubeconfig = offline_kubeconfig(tmp_path)
    assert prod_step_handler(kubeconfig).gpu_pending_timeout_s == 900
    assert prod_step_handler(kubeconfig, gpu_pending_timeout_seconds=120).gpu_pending_timeout_s == 120
    with pytest.raises(dg.DagsterInvalidConfigError, match="at least 60"):
        prod_step_handler(kubeconfig, gpu_pending_timeout_seconds=0)


def test_a_step_without_a_gpu_keeps_its_placement_on_retries():
    from datacreek_assets.k8s_launcher import placement_for_attempt

    cpu_step = {"container_config": {"resources": {"limits": {"cpu": "2"}}}}
    assert placement_for_attempt(cpu_step, 3) is cpu_step


def test_tenant_manifests_command_renders_registered_tenants_only(tmp_path):
    from click.testing import CliRunner

    from datacreek_assets.cli import cli
    from datacreek_assets.tenant_registry import TenantRegistry

    env = {"DATACREEK_STATE_DIR": str(tmp_path), "DATACREEK_NEO4J_PORT": "1", "DATACREEK_FALKORDB_PORT": "1"}
    TenantRegistry(f"sqlite:///{tmp_path / 'registry.db'}").add("acme")
    result = CliRunner().invoke(cli, ["tenant", "manifests", "acme", "--gpus", "2"], env=env)
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == {"tenant-acme"}
    quota = next(d for d in docs if d["kind"] == "ResourceQuota")["spec"]["hard"]
    assert quota["requests.nvidia.com/gpu"] == "2" and quota["pods"] == "20"  # override merged with defaults
    unknown = CliRunner().invoke(cli, ["tenant", "manifests", "globex"], env=env)
    assert unknown.exit_code == 2 and "not registered" in unknown.output


def test_the_tenant_s3_policy_reaches_its_own_prefixes_only_under_real_iam_evaluation(helm, tmp_path, monkeypatch):
    """The chart's IAM policy for acme, enforced by moto's IAM engine (a moto server started with
    authentication on): acme's role reads and writes its own objects, reads the shared Feast
    registry, and is denied every object of globex. moto does not evaluate the s3:prefix condition
    of ListBucket, so the listing statement is checked as written."""
    import os
    import socket
    import sys
    import time

    import boto3
    from botocore.exceptions import ClientError

    from datacreek_assets.local_services import free_port

    credentials = {"s3": {"bucket": "platform", "roleArn": "arn:aws:iam::123456789012:role/datacreek-tenant-acme",
                          "feastOfflinePrefix": "feast/offline", "feastRegistryKey": "feast/registry.db",
                          "mlflowPrefix": "mlflow"}, "neo4j": {"database": True}}
    docs = k8s.render_tenant(helm, k8s.tenant_values("acme", credentials=credentials))
    assert k8s.validate(docs) == []
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("datacreek-tenant-acme")
    access = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "datacreek-tenant-access")
    policy = json.loads(access["data"]["s3-policy.json"])
    cypher = access["data"]["neo4j-user.cypher"]
    assert "`tenant-acme`" in cypher and "tenant_acme" in cypher and "globex" not in cypher
    [listing] = [s for s in policy["Statement"] if s["Sid"] == "TenantListing"]
    assert all("acme" in prefix for prefix in listing["Condition"]["StringLike"]["s3:prefix"])

    def keys(tenant):
        return [f"tenants/{tenant}/inbox/a.md", f"ingest-toxic/{tenant}/x.json",
                f"feast/offline/chunk_embeddings/{tenant}/part.parquet",
                f"feast/offline/chunk_topology/{tenant}/part.parquet", f"mlflow/{tenant}/1/artifacts/a.png"]

    seeds = keys("acme") + keys("globex") + ["feast/registry.db", "secrets.env"]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(4 + len(seeds))})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.2)
        url, region = f"http://127.0.0.1:{port}", "us-east-1"
        admin = {"endpoint_url": url, "region_name": region, "aws_access_key_id": "setup", "aws_secret_access_key": "x"}
        boto3.client("s3", **admin).create_bucket(Bucket="platform")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="acme")
        iam.put_user_policy(UserName="acme", PolicyName="tenant", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="acme")["AccessKey"]
        for seed in seeds:  # the last unauthenticated actions: from here on, every call is checked
            boto3.client("s3", **admin).put_object(Bucket="platform", Key=seed, Body=b"seed")
        acme = boto3.client("s3", endpoint_url=url, region_name=region, aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])

        def denied(call) -> bool:
            try:
                call()
            except ClientError as err:
                return err.response["Error"]["Code"] == "AccessDenied"
            return False

        for own in keys("acme"):
            assert acme.get_object(Bucket="platform", Key=own)["Body"].read() == b"seed"
            acme.put_object(Bucket="platform", Key=own, Body=b"mine")
            acme.delete_object(Bucket="platform", Key=own)
        assert acme.get_object(Bucket="platform", Key="feast/registry.db")["Body"].read() == b"seed"
        assert denied(lambda: acme.put_object(Bucket="platform", Key="feast/registry.db", Body=b"x"))
        for other in [*keys("globex"), "secrets.env"]:
            assert denied(lambda: acme.get_object(Bucket="platform", Key=other)), other
            assert denied(lambda: acme.put_object(Bucket="platform", Key=other, Body=b"x")), other
            assert denied(lambda: acme.delete_object(Bucket="platform", Key=other)), other

        # the feature store's offline files under acme's role: per-write files, compaction, removal
        import numpy as np
        import pandas as pd
        from prometheus_client import CollectorRegistry

        from datacreek_assets.embeddings.feature_store import (
            COMPACT_AT,
            FeatureStoreSettings,
            TenantFeatures,
            open_feature_store,
        )
        from datacreek_assets.metrics import FeatureCacheMetrics

        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        settings = FeatureStoreSettings(registry=str(tmp_path / "registry.db"), offline_dir="s3://platform/feast/offline",
                                        online={"type": "sqlite", "path": str(tmp_path / "online.db")}, s3_endpoint=url)
        features = TenantFeatures(open_feature_store(settings), settings, "acme",
                                  FeatureCacheMetrics.for_registry(CollectorRegistry()))
        for i in range(COMPACT_AT + 1):
            features.write(pd.DataFrame({"embedding_hash": [f"h{i}"], "chunk_id": [f"c{i}"], "doc_id": ["d.md"],
                                         "vector_fp8": [np.zeros(384, np.uint8).tobytes()], "scale": [1.0],
                                         "deleted": [False]}))
        assert len(features.offline_files()) == 1 and features.live_count() == COMPACT_AT + 1
        assert features.drop_all() == COMPACT_AT + 1 and features.offline_files() == []
        with pytest.raises(OSError, match="ACCESS_DENIED|AccessDenied"):  # globex's offline rows stay out of reach
            TenantFeatures(open_feature_store(settings), settings, "globex").stored_rows()
    finally:
        server.kill()
        server.wait()
