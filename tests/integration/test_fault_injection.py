"""Faults injected into the real services and processes: each is killed for real (SIGKILL, no
clean shutdown) at a chosen moment, brought back, and what it held is checked to the last row; and
FalkorDB frozen (SIGSTOP), which its callers must survive."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import requests

from datacreek_assets.billing.ledger import CreditLedger
from datacreek_assets.billing.prometheus import PrometheusServer
from datacreek_assets.defs.billing.sensors import quota_sensor
from datacreek_assets.defs.finetune.assets import finetuned_adapter
from datacreek_assets.defs.finetune.mlflow_runs import mlflow_runs_of_canceled_runs
from datacreek_assets.defs.graph.assets import knowledge_graph
from datacreek_assets.defs.ingest.assets import parsed_chunks, raw_documents
from datacreek_assets.demo_corpus import write_demo_corpus
from datacreek_assets.graph_store import TenantGraph
from datacreek_assets.hot_graph import connect_hot_graph
from datacreek_assets.local_services import FalkorDBService, Neo4jService, ServiceError, _port_open, free_port
from datacreek_assets.object_store import TenantObjectStore
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.tenant_credentials import falkordb_user, grant_falkordb_user, revoke_falkordb_user
from datacreek_assets.tenant_lifecycle import add_tenant, remove_tenant
from resources.factory import open_tenant_stores
from resources.stores import (CreditLedgerResource, FeatureStoreResource, FineTuneResource, HotGraphResource,
                              MlflowTrackingResource, ObjectStoreResource, TenantRegistryResource)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Running, not a zombie: a killed process whose parent has not reaped it yet is dead."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_hard(pid: int) -> None:
    """SIGKILL the process and its children, as a crashed container loses them all (FalkorDB's
    background save is a forked child that would otherwise hold the port), and wait until they
    are gone (reaped when they are this process's children)."""
    import psutil

    try:
        children = [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # it ended on its own meanwhile
        return
    for victim in (pid, *children):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(_alive(victim) for victim in (pid, *children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for victim in (pid, *children):
        try:
            os.waitpid(victim, os.WNOHANG)
        except ChildProcessError:
            pass
    assert not any(_alive(victim) for victim in (pid, *children)), f"pid {pid} survived SIGKILL"


@pytest.fixture
def two_tenants(local_resources, instance):
    """Two onboarded tenants with the same six demo documents, parsed and chunked."""
    names = ("fault-killed", "fault-calm")
    with open_tenant_stores(local_resources) as stores:
        for name in names:
            add_tenant(name, stores, instance)
            write_demo_corpus(TenantObjectStore(stores.objects, name), max_docs=6)
            assert dg.materialize([raw_documents, parsed_chunks], partition_key=name, instance=instance,
                                  resources=local_resources).success
        yield names
        for name in names:
            remove_tenant(name, stores, instance, force=True)


def test_neo4j_killed_mid_ingest_then_retried_gives_the_graph_an_undisturbed_run_gives(
        services, local_resources, instance, two_tenants, monkeypatch):
    killed, calm = two_tenants
    assert dg.materialize([knowledge_graph], partition_key=calm, instance=instance, resources=local_resources).success
    neo4j = Neo4jService(services)
    original = TenantGraph._replace_group

    def replace_then_die(self, tx, docs, batch_size):
        original(self, tx, docs, batch_size)  # every statement of the transaction has run...
        if self.tenant_id == killed:
            kill_hard(neo4j.our_pid())  # ...and the server dies before the commit

    monkeypatch.setattr(TenantGraph, "_replace_group", replace_then_die)
    failed = dg.materialize([knowledge_graph], partition_key=killed, instance=instance, resources=local_resources,
                            raise_on_error=False)
    assert not failed.success
    monkeypatch.setattr(TenantGraph, "_replace_group", original)
    neo4j.up(timeout=240, progress=lambda message: None)

    with local_resources["graph_store"].admin() as graph:
        assert graph.tenant(killed).counts().nodes.get("Document", 0) == 0  # the uncommitted transaction left nothing
    retried = dg.materialize([knowledge_graph], partition_key=killed, instance=instance, resources=local_resources)
    assert retried.success
    with local_resources["graph_store"].admin() as graph:
        after, undisturbed = graph.tenant(killed).fingerprint(), graph.tenant(calm).fingerprint()
        counts = graph.tenant(killed).counts()

    def canonical(lines: list[str], tenant: str) -> list[str]:
        # the Tenant node holds its creation time, a document's revision the time it was written
        return sorted(re.sub(r"'revision': \d+", "'revision': R", line.replace(f"'{tenant}'", "'T'"))
                      for line in lines if "'Tenant'" not in line)

    assert counts.nodes["Document"] == 6 and counts.nodes["Chunk"] > 0
    assert canonical(after, killed) == canonical(undisturbed, calm)  # every node, edge and property


def test_falkordb_killed_and_restarted_brings_every_tenant_graph_back(services, local_resources):
    store = local_resources["hot_graph"].store()
    tenants = {"hot-a": 40, "hot-b": 7}
    for tenant, n in tenants.items():
        store.create_scope(tenant)
        store.graph(tenant).query("UNWIND range(1, $n) AS i CREATE (:Entity {tenant_id: $tenant, i: i})",
                                  {"n": n, "tenant": tenant})
    password = grant_falkordb_user(store.client.connection, "hot-a")  # a tenant's user, in the ACL file
    try:
        time.sleep(1.5)  # appendfsync everysec: a write is on disk within a second
        falkordb = FalkorDBService(services)
        killed = falkordb.our_pid()
        store.client.connection.bgsave()  # killed during a background save, whose forked child goes too
        kill_hard(killed)
        deadline = time.monotonic() + 30  # the kernel lets go of the listening socket
        while _port_open(services.falkordb_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        restarted = falkordb.up(timeout=120, progress=lambda message: None)
        assert restarted.pid not in (None, killed) and restarted.answers, restarted
        again = local_resources["hot_graph"].store()  # a fresh client, as a restarted worker has
        assert {"hot-a", "hot-b"} <= set(again.tenants())
        for tenant, n in tenants.items():
            assert again.node_count(tenant) == n + 1  # its Tenant node and every entity
        own = connect_hot_graph("127.0.0.1", services.falkordb_port, falkordb_user("hot-a"), password)
        assert own.node_count("hot-a") == tenants["hot-a"] + 1  # and the tenant's user came back with them
    finally:
        with contextlib.suppress(Exception):  # never hide why the test failed behind its cleanup
            revoke_falkordb_user(local_resources["hot_graph"].store().client.connection, "hot-a")
            for tenant in tenants:
                local_resources["hot_graph"].store().drop_scope(tenant)


def test_a_falkordb_that_stops_answering_fails_its_callers_within_the_timeout_and_they_recover(services):
    """A server that accepts connections and answers none (as FalkorDB 4.16.3 deadlocked once in CI,
    hanging a test for its whole 900 s): frozen for real with SIGSTOP, the store's calls and a new
    connection fail within the resource's timeout_s with a clear error, and work again once it runs."""
    import redis

    hot_graph = HotGraphResource(port=services.falkordb_port, timeout_s=1.0)
    store = hot_graph.store()
    assert store.node_count("stall-a") == 0
    pid = FalkorDBService(services).our_pid()
    assert pid, "the session's FalkorDB was not started by this session"
    os.kill(pid, signal.SIGSTOP)
    try:  # a hang would fail the test at pytest's timeout; the message names the 1 s waited
        with pytest.raises(redis.TimeoutError):
            store.node_count("stall-a")
        with pytest.raises(ServiceError, match=r"FalkorDB is not reachable at 127\.0\.0\.1:\d+ "
                                               r"\(TimeoutError after 1 s\).*datacreek services down"):
            hot_graph.store()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert hot_graph.store().node_count("stall-a") == 0
    assert store.node_count("stall-a") == 0  # the old client reconnects too


def test_a_redis_online_store_that_stops_answering_fails_lookups_within_the_timeout_and_they_recover(
        services, tmp_path):
    """Feast's Redis online store (the prod profile's; here the session's FalkorDB, a Redis server)
    frozen with SIGSTOP: a lookup fails with redis' TimeoutError after the resource's
    online_timeout_s instead of hanging its serving request, and works again once it runs."""
    import numpy as np
    import pandas as pd
    import redis
    from prometheus_client import CollectorRegistry

    from datacreek_assets.embeddings.feature_store import TenantFeatures, open_feature_store
    from datacreek_assets.embeddings.fp8 import quantize
    from datacreek_assets.metrics import FeatureCacheMetrics

    settings = FeatureStoreResource(registry=str(tmp_path / "registry.db"), offline_dir=str(tmp_path / "offline"),
                                    online_type="redis", online_connection=f"127.0.0.1:{services.falkordb_port}",
                                    online_timeout_s=1.0).settings()
    store = open_feature_store(settings)
    metrics = FeatureCacheMetrics.for_registry(CollectorRegistry())
    vector = np.ones((1, 384), dtype=np.float32) / np.sqrt(384)
    blobs, scales = quantize(vector)
    key = "f" * 64
    TenantFeatures(store, settings, "stall-feast", metrics).write(pd.DataFrame({
        "embedding_hash": [key], "chunk_id": ["c0"], "doc_id": ["d.txt"], "vector_fp8": blobs, "scale": scales,
        "deleted": False}))
    # the client Feast made: each command waits 1 s and is tried once (redis' default would retry a
    # timed-out command, several timeouts per lookup)
    connection = store.provider.online_store._get_client(store.config.online_store).connection_pool.make_connection()
    assert (connection.socket_timeout, connection.socket_connect_timeout, connection.retry.get_retries()) == (1.0, 1.0, 0)
    pid = FalkorDBService(services).our_pid()
    assert pid, "the session's FalkorDB was not started by this session"
    os.kill(pid, signal.SIGSTOP)
    try:  # a hang would fail the test at pytest's timeout
        with pytest.raises(redis.TimeoutError):
            TenantFeatures(store, settings, "stall-feast", metrics).lookup([key])
    finally:
        os.kill(pid, signal.SIGCONT)
    found = TenantFeatures(store, settings, "stall-feast", metrics).lookup([key])[key]
    assert found is not None and float(found @ vector[0]) > 0.99


TRAIN = {"epochs": 3, "learning_rate": 1e-2, "max_seq_len": 256, "effective_batch": 4, "checkpoint_every": 2}
WORKER = """
import json
import os
import sys
import dagster as dg
from datacreek_assets.defs.finetune.assets import finetuned_adapter
from datacreek_assets.partitions import TENANTS_PARTITION
from tests.integration.test_fault_injection import training_resources
root, tenant, config = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(f"{root}/dagster", exist_ok=True)
with dg.DagsterInstance.local_temp(tempdir=f"{root}/dagster") as instance:  # the test reads its runs after
    instance.add_dynamic_partitions(TENANTS_PARTITION, [tenant])
    dg.materialize([finetuned_adapter], partition_key=tenant, instance=instance, resources=training_resources(root),
                   run_config={"ops": {"finetuned_adapter": {"config": json.loads(config)}}})
"""


def training_resources(root: str) -> dict:
    mlflow = MlflowTrackingResource(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=f"{root}/artifacts")
    return {
        "object_store": ObjectStoreResource(backend="local", root=f"{root}/objects"),
        "mlflow": mlflow,
        "finetune": FineTuneResource(models_dir=f"{root}/models", base_cache_dir=f"{root}/base", mlflow=mlflow,
                                     base_model="tiny-llama", cpu_fallback="fp32", threads=1),
        "credit_ledger": CreditLedgerResource(url=f"sqlite:///{root}/ledger.db", heartbeat_s=0.2),
    }


def start_training_worker(root: str, tenant: str, config: dict) -> subprocess.Popen:
    """A training run in its own process, stopped at its first complete checkpoint (state.json is
    written last, then the folder renamed into place): it is mid-training then."""
    started = time.monotonic()
    worker = subprocess.Popen([sys.executable, "-c", WORKER, root, tenant, json.dumps(config)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not list(Path(root, "models").glob("tenants/*/runs/*/checkpoints/step-*/state.json")):
            assert worker.poll() is None, "the worker ended before its first checkpoint"
            assert time.monotonic() - started < 600
            time.sleep(0.1)
    except BaseException:
        worker.kill()
        raise
    return worker


def mlflow_runs_of(resources: dict, tenant: str) -> list:
    tracking = resources["mlflow"].for_tenant(tenant)
    return tracking.client.search_runs([tracking.experiment_id])


def test_a_training_worker_killed_mid_run_resumes_from_its_checkpoint_and_is_billed_once(tmp_path, instance):
    from tests.integration.test_finetune_assets import write_dataset

    tenant, root = "fault-train", str(tmp_path)
    resources = training_resources(root)
    write_dataset(resources["object_store"], tenant, f"{root}/models")
    started = time.monotonic()
    worker = start_training_worker(root, tenant, TRAIN)
    try:
        kill_hard(worker.pid)
    finally:
        if worker.poll() is None:
            worker.kill()
    lived_ms = (time.monotonic() - started) * 1000
    worker.wait()

    ledger = CreditLedger(f"sqlite:///{root}/ledger.db")
    [orphan] = ledger.meters(tenant, status="open")  # it died holding its meter
    time.sleep(1.0)  # three missed beats
    quota_sensor(dg.build_sensor_context(instance=instance, resources={"credit_ledger": resources["credit_ledger"]}))
    assert ledger.meters_by_id(orphan.meter_id).status == "orphaned"

    # No step code ran to end its MLflow run: the run is left RUNNING until the Dagster run is
    # marked canceled (by an operator, or failed by run monitoring), and the run-status sensor ends it.
    [opened] = mlflow_runs_of(resources, tenant)
    assert opened.info.status == "RUNNING"
    with dg.DagsterInstance.local_temp(tempdir=f"{root}/dagster") as killed_in:
        [killed_run] = killed_in.get_runs()
        assert opened.data.tags["dagster_run_id"] == killed_run.run_id
        killed_in.report_run_canceled(killed_run)
        [canceled] = killed_in.all_logs(killed_run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
        context = dg.build_run_status_sensor_context(
            sensor_name=mlflow_runs_of_canceled_runs.name, dagster_event=canceled.dagster_event,
            dagster_instance=killed_in, dagster_run=killed_in.get_run_by_id(killed_run.run_id),
            resources={"mlflow": resources["mlflow"]})
        assert mlflow_runs_of_canceled_runs(context) is None  # it ended one
    [ended] = mlflow_runs_of(resources, tenant)
    assert ended.info.status == "KILLED"

    instance.add_dynamic_partitions(TENANTS_PARTITION, [tenant])
    retry = dg.materialize([finetuned_adapter], partition_key=tenant, instance=instance, resources=resources,
                           run_config={"ops": {"finetuned_adapter": {"config": TRAIN}}})
    assert retry.success
    meta = retry.asset_materializations_for_node("finetuned_adapter")[0].metadata
    assert meta["resumed_from_step"].value >= TRAIN["checkpoint_every"]
    assert meta["steps"].value > meta["resumed_from_step"].value
    # the resumed training continued the same MLflow run, under the run that resumed it, and the
    # run-end hook closed it when that run's last step succeeded
    [resumed] = mlflow_runs_of(resources, tenant)
    assert resumed.info.run_id == opened.info.run_id == meta["mlflow_run_id"].value
    assert resumed.info.status == "FINISHED" and resumed.data.tags["dagster_run_id"] == retry.run_id

    meters = ledger.meters(tenant)
    assert sorted(m.status for m in meters) == ["closed", "orphaned"]
    usage = [t for t in ledger.transactions(tenant) if t.kind == "usage"]
    for meter in meters:  # each stretch of time is billed once, by its own meter
        span = (meter.billed_until_ms - meter.started_ms) * meter.units
        assert sum(t.resource_ms for t in usage if t.meter_id == meter.meter_id) == span
    killed_meter = ledger.meters_by_id(orphan.meter_id)
    assert 0 < killed_meter.billed_until_ms - killed_meter.started_ms <= lived_ms  # no more than it lived
    [closed] = [m for m in meters if m.status == "closed"]
    assert closed.started_ms >= killed_meter.billed_until_ms  # the stretches do not overlap


def test_a_training_step_interrupted_mid_run_ends_its_mlflow_run_killed_and_its_retry_opens_another(tmp_path):
    """SIGTERM, as a spot node's drain sends it: the step is interrupted inside the training loop and
    its MLflow run ends KILLED; the step's retry policy runs it again (on Kubernetes, on the next
    rung), which resumes the checkpoint under a new MLflow run of the same Dagster run."""
    from tests.integration.test_finetune_assets import write_dataset

    tenant, root = "fault-stop", str(tmp_path)
    resources = training_resources(root)
    write_dataset(resources["object_store"], tenant, f"{root}/models")
    worker = start_training_worker(root, tenant, {**TRAIN, "epochs": 50})
    try:
        [interrupted] = mlflow_runs_of(resources, tenant)
        assert interrupted.info.status == "RUNNING"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=600) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    runs = {run.info.run_id: run for run in mlflow_runs_of(resources, tenant)}
    assert runs.pop(interrupted.info.run_id).info.status == "KILLED"
    [retried] = runs.values()
    assert retried.info.status == "FINISHED"  # the run-end hook, when the step (the job's last) succeeded
    with dg.DagsterInstance.local_temp(tempdir=f"{root}/dagster") as ran_in:
        [run] = ran_in.get_runs()
        events = [e.dagster_event.event_type_value for e in ran_in.all_logs(run.run_id) if e.dagster_event]
    assert "STEP_UP_FOR_RETRY" in events and run.status == dg.DagsterRunStatus.SUCCESS
    for mlflow_run in (interrupted, retried):
        assert mlflow_run.data.tags["dagster_run_id"] == run.run_id
        assert mlflow_run.data.tags["dagster/partition"] == tenant
        assert mlflow_run.data.tags["dagster/asset_key"] == "finetuned_adapter"


def test_the_billing_exporter_killed_mid_scrape_loses_and_double_counts_nothing(cli_env, datacreek, tmp_path):
    state = tmp_path / "state"
    registry = TenantRegistryResource(url=f"sqlite:///{state / 'registry.db'}")
    state.mkdir()
    registry.registry().add("exporter-t")
    ledger = CreditLedger(f"sqlite:///{state / 'ledger.db'}", trial_credits=100)
    token, port = "exporter-admin-token-0001", free_port()
    env = {**cli_env, "DATACREEK_STATE_DIR": str(state), "DATACREEK_ADMIN_TOKEN": token}

    def bill(run: str, minutes: int) -> None:
        meter = ledger.open_meter("exporter-t", run, "finetuned_adapter", "gpu", 1, 0)
        ledger.bill_meter(meter, minutes * 60_000, close=True)

    def start() -> subprocess.Popen:
        exporter = subprocess.Popen([datacreek, "billing", "serve", "--port", str(port)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/metrics", headers=auth, timeout=2).ok:
                    return exporter
            except requests.ConnectionError:
                time.sleep(0.3)
        raise AssertionError("the exporter did not start")

    def seen(prometheus, query: str, value: float) -> bool:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = prometheus.query(query)
            if result and float(result[0]["value"][1]) == value:
                return True
            time.sleep(0.5)
        return False

    auth = {"Authorization": f"Bearer {token}"}
    bill("run-1", 3)
    exporter = start()
    try:
        with PrometheusServer(tmp_path / "prometheus", free_port(), [f"127.0.0.1:{port}"],
                              bearer_token=token) as prometheus:
            assert seen(prometheus, 'gpu_minutes_total{tenant="exporter-t"}', 3.0)
            stop, scrapes = threading.Event(), []

            def hammer():  # scrapes in flight when the kill lands
                while not stop.is_set():
                    try:
                        scrapes.append(requests.get(f"http://127.0.0.1:{port}/metrics", headers=auth, timeout=2).ok)
                    except requests.RequestException:
                        scrapes.append(False)

            threads = [threading.Thread(target=hammer) for _ in range(2)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            kill_hard(exporter.pid)
            bill("run-2", 2)  # usage goes on while the exporter is down
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join()
            assert True in scrapes and False in scrapes  # some scrapes were cut off
            exporter = start()
            assert seen(prometheus, 'gpu_minutes_total{tenant="exporter-t"}', 5.0)  # none lost, none twice
            assert seen(prometheus, 'resets(gpu_minutes_total{tenant="exporter-t"}[5m])', 0.0)  # never reset
            assert seen(prometheus, 'gpu_cost_total{tenant="exporter-t"}', 5.0)
    finally:
        exporter.kill()
        exporter.wait()
    [gpu] = [u for u in ledger.usage() if u.resource == "gpu"]
    assert gpu.minutes == 5.0
