"""Kubernetes manifests, offline: render (helm), validate (kubernetes-validate, strict), analyse
network isolation (network-config-analyzer), and inspect the Job dagster-k8s builds for a GPU step."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from datacreek_assets import kubernetes as k8s
from datacreek_assets.settings import LocalSettings

TENANTS = ["acme", "globex"]


@pytest.fixture(scope="module")
def helm() -> Path:
    return k8s.helm_binary(LocalSettings.from_env().download_cache)


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {t: k8s.render_tenant(helm, k8s.tenant_values(t)) for t in TENANTS}


def kinds(docs):
    return sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)


def test_the_tenant_chart_renders_valid_manifests(rendered):
    docs = rendered["acme"]
    assert kinds(docs) == sorted([
        "Namespace/tenant-acme", "ResourceQuota/tenant-quota", "LimitRange/tenant-limits",
        "NetworkPolicy/default-deny", "NetworkPolicy/allow-same-namespace", "NetworkPolicy/allow-dns",
        "NetworkPolicy/allow-platform", "ServiceAccount/datacreek-run", "Role/datacreek-run",
        "RoleBinding/datacreek-run", "RoleBinding/dagster-launcher"])
    assert all(d["metadata"].get("namespace", "tenant-acme") == "tenant-acme" for d in docs)
    assert all(d["metadata"]["labels"]["datacreek/tenant"] == "acme" for d in docs)
    quota = next(d for d in docs if d["kind"] == "ResourceQuota")["spec"]["hard"]
    assert quota["requests.nvidia.com/gpu"] == "1" and quota["pods"] == "20"
    for tenant in TENANTS:
        assert k8s.validate(rendered[tenant]) == []


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


def test_nca_proves_tenants_cannot_reach_each_other_but_reach_dns_and_the_platform(rendered):
    policies = rendered["acme"] + rendered["globex"]
    allowed = k8s.connectivity(policies, k8s.model_cluster(TENANTS))
    assert k8s.isolation_violations(allowed, TENANTS) == []
    pairs = {(c.src_ns, c.dst_ns) for c in allowed}
    for tenant in TENANTS:
        ns = f"tenant-{tenant}"
        assert (ns, ns) in pairs  # within the namespace
        assert (ns, k8s.PLATFORM_NAMESPACE) in pairs and (k8s.PLATFORM_NAMESPACE, ns) in pairs
        dns = {c.connection for c in allowed if c.src_ns == ns and c.dst_ns == "kube-system"}
        assert dns and all("53" in c for c in dns)  # DNS only
    assert ("tenant-acme", "tenant-globex") not in pairs and ("tenant-globex", "tenant-acme") not in pairs


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


def test_the_job_dagster_k8s_builds_for_a_gpu_step_with_the_tenant_context_is_valid():
    import dagster as dg
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
    from kubernetes.client import ApiClient

    from datacreek_assets.defs import build_definitions
    from datacreek_assets.k8s_launcher import tenant_container_context
    from datacreek_assets.tenancy import TENANT_TAG

    graph = build_definitions("prod").resolve_asset_graph()
    for asset in ("finetuned_adapter", "chunk_embeddings"):
        tags = graph.get(dg.AssetKey(asset)).assets_def.op.tags
        op_config = tags["dagster-k8s/config"]
        op_config = json.loads(op_config) if isinstance(op_config, str) else op_config
        run = dg.DagsterRun(job_name="__ASSET_JOB", run_id="0123456789abcdef", tags={TENANT_TAG: "acme"})
        # the run's context (tenant namespace, service account) merged with the step's op tags,
        # as the k8s_job_executor merges them
        context = tenant_container_context(run).merge(
            K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(op_config)))
        job_config = DagsterK8sJobConfig(job_image="registry.example.com/datacreek:0.1.0",
                                         dagster_home="/opt/dagster/dagster_home", image_pull_policy="IfNotPresent",
                                         instance_config_map="dagster-instance")
        job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "dagster-step-0123",
                                        user_defined_k8s_config=context.run_k8s_config, pod_name="dagster-step-0123",
                                        component="step_worker")
        doc = ApiClient().sanitize_for_serialization(job)
        doc["metadata"]["namespace"] = context.namespace  # where create_namespaced_job puts it
        assert k8s.validate([doc]) == []
        pod = doc["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"key": "preemptible", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod["tolerations"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["key"] == "datacreek/gpu-pool"
        assert pod["restartPolicy"] == "OnFailure" and doc["spec"]["backoffLimit"] == 3
        assert pod["serviceAccountName"] == "datacreek-run" and doc["metadata"]["namespace"] == "tenant-acme"
        assert doc["metadata"]["labels"]["datacreek/tenant"] == "acme"


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
