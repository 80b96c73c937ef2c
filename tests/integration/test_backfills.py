"""A real backfill across tenants through `dagster dev` (webserver + daemon): one tenant
fails, the others succeed, every run carries the tenant tag, and a retry reruns only the
failed tenant."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import requests

from datacreek_assets.local_services import free_port
from datacreek_assets.object_store import TenantObjectStore
from datacreek_assets.partitions import TENANTS_PARTITION
from datacreek_assets.run_coordinator import partition_of
from datacreek_assets.settings import ensure_dagster_home
from datacreek_assets.tenant_lifecycle import add_tenant, remove_tenant
from resources.factory import open_tenant_stores

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def dagster_web(services, tmp_path_factory, cli_env_module):
    home = ensure_dagster_home(tmp_path_factory.mktemp("dagster_home"))
    port = free_port()
    env = {**cli_env_module, "DAGSTER_HOME": str(home)}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            pytest.fail("dagster dev did not come up in 180 s")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield url, instance, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # still stopping its runs on a busy machine: no teardown error for that
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture(scope="module")
def cli_env_module(services):
    env = dict(os.environ)
    env.update({"DATACREEK_STATE_DIR": str(services.state_dir), "DATACREEK_NEO4J_PORT": str(services.neo4j_port),
                "DATACREEK_FALKORDB_PORT": str(services.falkordb_port), "DATACREEK_PROFILE": "local",
                # automation in this `dagster dev` may go on to fine-tune these tenants: the tiny model
                "DATACREEK_BASE_MODEL": services.base_model})
    return env


def test_backfill_isolates_a_failing_tenant_and_retries_only_it(dagster_web, local_resources, datacreek):
    url, instance, env = dagster_web
    tenants = ["bf-a", "bf-b", "bf-c"]
    with open_tenant_stores(local_resources) as stores:
        for tenant in tenants[:2]:
            add_tenant(tenant, stores, instance)
        instance.add_dynamic_partitions(TENANTS_PARTITION, ["bf-c"])  # a partition, but never onboarded
        for tenant in tenants:
            TenantObjectStore(stores.objects, tenant).put("inbox/a.md", f"# {tenant}\n\nPython is a language.".encode())
        try:
            def backfill(*args):
                return subprocess.run([datacreek, "backfill", "--url", url, "--timeout", "300", *args],
                                      env=env, capture_output=True, text=True, timeout=400)

            first = backfill("--tenants", ",".join(tenants), "--select", "raw_documents,parsed_chunks")
            assert first.returncode == 1, first.stdout + first.stderr
            assert "bf-c" in first.stderr and "1 tenant(s) failed" in first.stderr
            lines = {line.split()[0]: line.split()[1] for line in first.stdout.splitlines() if line.startswith("  bf-")}
            assert lines == {"bf-a": "success", "bf-b": "success", "bf-c": "failed"}

            runs = instance.get_runs(dg.RunsFilter(tags={"datacreek/launched-by": "cli-backfill"}))
            assert {partition_of(r.tags) for r in runs} == set(tenants)  # one run per tenant
            assert all(r.tags["datacreek/tenant"] == partition_of(r.tags) for r in runs)

            add_tenant("bf-c", stores, instance)  # the fix: onboard it
            retry = backfill("--retry-failed")
            assert retry.returncode == 0, retry.stdout + retry.stderr
            assert "all 1 tenant(s) succeeded" in retry.stdout
            after = instance.get_runs(dg.RunsFilter(tags={"datacreek/launched-by": "cli-backfill"}))
            new_runs = [r for r in after if r.run_id not in {x.run_id for x in runs}]
            assert {partition_of(r.tags) for r in new_runs} == {"bf-c"}  # only the failed tenant reran
            assert instance.get_materialized_partitions(dg.AssetKey("parsed_chunks")) >= set(tenants)
        finally:
            for tenant in tenants:
                if stores.registry.get(tenant) or instance.has_dynamic_partition(TENANTS_PARTITION, tenant):
                    remove_tenant(tenant, stores, instance, force=True)


def test_backfill_without_a_webserver_says_how_to_start_one(cli_env, datacreek):
    out = subprocess.run([datacreek, "backfill", "--tenants", "a", "--select", "raw_documents",
                          "--url", f"http://127.0.0.1:{free_port()}"], env=cli_env, capture_output=True, text=True)
    assert out.returncode == 3 and "make dev" in out.stderr and "Traceback" not in out.stderr
