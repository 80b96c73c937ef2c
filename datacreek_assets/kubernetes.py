"""Kubernetes manifests for tenants, checked offline.

- `render_tenant` renders the tenant chart (k8s/charts/datacreek-tenant) with helm, built
  once from its Go module (`go install helm.sh/helm/v3/cmd/helm@HELM_VERSION`) into the cache.
- `validate` checks manifests against the Kubernetes OpenAPI schemas (kubernetes-validate,
  strict: unknown fields are errors).
- `connectivity` asks network-config-analyzer (its own virtualenv, `NCA_VENV`) which namespaces
  may open connections to which, from the NetworkPolicies and a model cluster of pods;
  `isolation_violations` turns that into the list of holes between tenants.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from datacreek_assets.tenancy import validate_tenant_id

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "k8s" / "charts" / "datacreek-tenant"
STREAM_CHART = REPO / "k8s" / "charts" / "datacreek-stream"
SERVING_CHART = REPO / "k8s" / "charts" / "datacreek-serving"
INSTANCE_YAML = REPO / "k8s" / "dagster-instance.yaml"
HELM_VERSION = "v3.22.0"
KUBERNETES_VERSION = "1.37"  # the newest minor kubernetes-validate ships schemas for
PLATFORM_NAMESPACE = "datacreek-platform"
NCA_VENV = REPO / ".venv-nca"


class ManifestError(RuntimeError):
    pass


def helm_binary(cache_dir: Path) -> Path:
    """The helm binary, built from its Go module the first time (a few minutes, then cached)."""
    found = shutil.which("helm")
    if found:
        return Path(found)
    binary = cache_dir / "bin" / "helm"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ManifestError("helm is not installed and there is no Go toolchain to build it")
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(binary.parent), "GOFLAGS": "-mod=mod"}
    built = subprocess.run([go, "install", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"], env=env,
                           capture_output=True, text=True, cwd=tempfile.gettempdir())
    if built.returncode != 0 or not binary.exists():
        raise ManifestError(f"building helm failed: {built.stderr[-2000:]}")
    return binary


def tenant_values(tenant_id: str, **overrides) -> dict:
    values = {"tenant": {"id": validate_tenant_id(tenant_id)},
              "platform": {"namespace": PLATFORM_NAMESPACE, "instanceYaml": INSTANCE_YAML.read_text()}}
    for key, value in overrides.items():
        values[key] = value
    return values


def render_tenant(helm: Path, values: dict, chart: Path = CHART) -> list[dict]:
    """`helm template` of the tenant chart: the manifests as dicts."""
    return _render(helm, "datacreek-tenant", chart, values)


def render_stream(helm: Path, values: dict | None = None) -> list[dict]:
    """`helm template` of the stream job's chart (the platform namespace)."""
    return _render(helm, "datacreek-stream", STREAM_CHART, values or {})


def render_serving(helm: Path, values: dict | None = None) -> list[dict]:
    """`helm template` of the serving chart (the RayCluster in the platform namespace)."""
    return _render(helm, "datacreek-serving", SERVING_CHART, values or {})


def _render(helm: Path, release: str, chart: Path, values: dict) -> list[dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump(values, handle)
        handle.flush()
        out = subprocess.run([str(helm), "template", release, str(chart), "-f", handle.name],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise ManifestError(out.stderr.strip())
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate(documents: list[dict], version: str = KUBERNETES_VERSION) -> list[str]:
    """Schema errors of each manifest (strict); an empty list means all are valid."""
    import kubernetes_validate

    errors = []
    for doc in documents:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{name}: {err.message} at {'/'.join(map(str, err.path))}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as err:
            errors.append(f"{name}: {err}")
    return errors


@dataclass(frozen=True)
class Connection:
    src_ns: str
    dst_ns: str
    connection: str


# the platform's pods a tenant's network policy tells apart (app.kubernetes.io/name)
PLATFORM_PODS = ("dagster", "kafka", "datacreek-stream", "ray", "datacreek-serving-control")
# labels a platform pod carries besides app.kubernetes.io/name (KubeRay adds ray.io/cluster)
_POD_LABELS = {"ray": {"ray.io/cluster": "datacreek-serving"}}
# what tenants may open to the Ray pods: the router's port (Serve's proxy) only; and to the
# serving control API (release steps, with their tenant's token): its port
RAY_TENANT_PORTS = "{protocols:TCP,dst_ports:8000}"
CONTROL_TENANT_PORTS = "{protocols:TCP,dst_ports:8200}"


def model_cluster(tenants: list[str], platform_pods: tuple[str, ...] = PLATFORM_PODS) -> list[dict]:
    """Namespaces and their pods: the tenants' run pods, kube-dns, and the platform's pods."""
    docs, namespaces = [], set()

    def add(namespace: str, pod: str, labels: dict, ns_labels: dict | None = None) -> None:
        if namespace not in namespaces:
            namespaces.add(namespace)
            docs.append({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": namespace,
                                      "labels": {"kubernetes.io/metadata.name": namespace, **(ns_labels or {})}}})
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": pod, "namespace": namespace, "labels": labels},
                     "spec": {"containers": [{"name": "main", "image": "busybox"}]}})

    for tenant in tenants:
        add(f"tenant-{tenant}", "run", {"app": "dagster-run"}, {"datacreek/tenant": tenant})
    add("kube-system", "coredns", {"k8s-app": "kube-dns"})
    for pod in platform_pods:
        add(PLATFORM_NAMESPACE, pod, {"app.kubernetes.io/name": pod, **_POD_LABELS.get(pod, {})})
    return docs


def nca_binary() -> Path:
    binary = NCA_VENV / "bin" / "nca"
    if not binary.exists():
        raise ManifestError(f"network-config-analyzer is not installed in {NCA_VENV}: run `make venv`")
    return binary


def connectivity(policies: list[dict], cluster: list[dict]) -> set[Connection]:
    """Allowed (source namespace, destination namespace, connection) from nca's connectivity map."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "policies").mkdir()
        (Path(tmp) / "cluster").mkdir()
        policy_docs = [d for d in policies if d.get("kind") == "NetworkPolicy"]
        (Path(tmp) / "policies" / "policies.yaml").write_text(yaml.safe_dump_all(policy_docs))
        (Path(tmp) / "cluster" / "cluster.yaml").write_text(yaml.safe_dump_all(cluster))
        out = subprocess.run([str(nca_binary()), "--connectivity", "policies/", "--resource_list", "cluster/",
                              "--output_format", "csv"], cwd=tmp, capture_output=True, text=True, timeout=300)
    if out.returncode not in (0, 1):  # nca's exit code counts findings; the csv is what matters
        raise ManifestError(f"nca failed ({out.returncode}): {out.stderr[-2000:]}")
    start = out.stdout.find('"query"')
    if start < 0:
        raise ManifestError(f"nca printed no connectivity table: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    allowed = set()
    for row in csv.DictReader(io.StringIO(out.stdout[start:])):
        src, dst, conn = row.get("src_ns", ""), row.get("dst_ns", ""), row.get("connection", "")
        if not conn:
            continue
        for s in _namespaces(src):
            for d in _namespaces(dst):
                allowed.add(Connection(s, d, conn))
    return allowed


def _namespaces(field: str) -> list[str]:
    field = field.strip()
    if not field:
        return [OUTSIDE]
    return [n.strip() for n in field.strip("[]").split(",") if n.strip()]


OUTSIDE = "<outside the cluster>"
# what a tenant may open to the outside: HTTPS to the object store and the API server (443, 6443)
_HTTPS_ONLY = re.compile(r"\{protocols:TCP,dst_ports:(443|6443|443,6443)\}")


def platform_exposure(policies: list[dict], tenants: list[str]) -> dict[str, set[str]]:
    """What the tenants' pods may open to each platform pod: one analysis per pod, alone in the
    platform namespace (nca reports a namespace's pods as label expressions, not names)."""
    exposure = {}
    for pod in PLATFORM_PODS:
        allowed = connectivity(policies, model_cluster(tenants, (pod,)))
        exposure[pod] = {c.connection for c in allowed
                         if c.src_ns.startswith("tenant-") and c.dst_ns == PLATFORM_NAMESPACE}
    return exposure


def platform_holes(exposure: dict[str, set[str]], kafka_tenant_port: int = 9094) -> list[str]:
    """Kafka open on anything but its tenant listener (the platform's listener authenticates no
    one); the stream job open at all (its REST API controls the job every tenant depends on);
    Ray open on anything but the router's port (its Ray Client, GCS and dashboard run anything);
    the serving control API on anything but its port."""
    holes = [f"tenants -> kafka: {c}" for c in sorted(exposure.get("kafka", ()))
             if c != f"{{protocols:TCP,dst_ports:{kafka_tenant_port}}}"]
    holes += [f"tenants -> ray: {c}" for c in sorted(exposure.get("ray", ())) if c != RAY_TENANT_PORTS]
    holes += [f"tenants -> datacreek-serving-control: {c}"
              for c in sorted(exposure.get("datacreek-serving-control", ())) if c != CONTROL_TENANT_PORTS]
    return holes + [f"tenants -> datacreek-stream: {c}" for c in sorted(exposure.get("datacreek-stream", ()))]


def isolation_violations(allowed: set[Connection], tenants: list[str]) -> list[str]:
    """Connections from one tenant's namespace to another's; from outside the cluster into a
    tenant; from a tenant out of the cluster on anything but HTTPS (443/6443)."""
    namespaces = {f"tenant-{t}" for t in tenants}
    holes = []
    for c in sorted(allowed, key=lambda c: (c.src_ns, c.dst_ns, c.connection)):
        if c.src_ns in namespaces and c.dst_ns in namespaces and c.src_ns != c.dst_ns:
            holes.append(f"{c.src_ns} -> {c.dst_ns}: {c.connection}")
        elif c.src_ns == OUTSIDE and c.dst_ns in namespaces:
            holes.append(f"{c.src_ns} -> {c.dst_ns}: {c.connection}")
        elif c.src_ns in namespaces and c.dst_ns == OUTSIDE and not _HTTPS_ONLY.fullmatch(c.connection):
            holes.append(f"{c.src_ns} -> {c.dst_ns}: {c.connection}")
    return holes
