import pytest

from datacreek_assets.local_services import FalkorDBService, Neo4jService, ServiceError, services_status
from datacreek_assets.settings import ConfigError, LocalSettings


def test_missing_java_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn on this PATH
    with pytest.raises(ServiceError) as err:
        Neo4jService(LocalSettings(state_dir=tmp_path, neo4j_port=29687)).up(timeout=1, progress=lambda m: None)
    message = str(err.value)
    assert "Java 17 is required" in message and "apt-get install" in message and "\n" not in message


def test_missing_maven_is_explained_when_jars_must_be_fetched(tmp_path, monkeypatch):
    java_only = tmp_path / "bin"
    java_only.mkdir()
    (java_only / "java").symlink_to("/bin/true")
    monkeypatch.setenv("PATH", str(java_only))
    settings = LocalSettings(state_dir=tmp_path, neo4j_port=29687, cache_dir=tmp_path / "empty-cache")
    with pytest.raises(ServiceError, match="Maven is required"):
        Neo4jService(settings).up(timeout=1, progress=lambda m: None)


def test_status_of_services_that_were_never_started(tmp_path):
    statuses = services_status(LocalSettings(state_dir=tmp_path, neo4j_port=29687, falkordb_port=29380,
                                             ray_port=29390, kafka_port=29092, flink_rest_port=29081))
    assert [(s.name, s.answers, s.started_by_us) for s in statuses] == [
        ("neo4j", False, False), ("falkordb", False, False), ("kafka", False, False), ("ray", False, False),
        ("flink", False, False)]


def test_a_stale_pid_file_is_not_trusted(tmp_path):
    svc = FalkorDBService(LocalSettings(state_dir=tmp_path, falkordb_port=29380))
    svc.home.mkdir(parents=True)
    svc.pid_file.write_text('{"pid": 1, "port": 29380}')  # pid 1 is not our redis-server
    assert svc.our_pid() is None
    assert svc.down(progress=lambda m: None) is False


@pytest.mark.parametrize("env", [{"DATACREEK_NEO4J_PORT": "x"}, {"DATACREEK_FALKORDB_PORT": "70000"}])
def test_bad_ports_are_config_errors(env):
    with pytest.raises(ConfigError):
        LocalSettings.from_env(env)


def test_stopping_ray_first_ends_this_process_s_own_driver(tmp_path):
    """A driver left connected to a stopped head ends its whole process a minute later (exit 1):
    `RayService.down` disconnects one in this process first. Run in a process of its own with a
    real single-node Ray, which ``down`` must leave disconnected."""
    import os
    import subprocess
    import sys

    script = (
        "import ray\n"
        "from pathlib import Path\n"
        "from datacreek_assets.local_services import RayService\n"
        "from datacreek_assets.settings import LocalSettings\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir='/tmp/datacreek-ray-unit')\n"
        "assert ray.is_initialized()\n"
        f"RayService(LocalSettings(state_dir=Path({str(tmp_path)!r}))).down(lambda message: None)\n"
        "print('connected after down:', ray.is_initialized())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "connected after down: False" in done.stdout


def test_postgres_stops_cleanly_with_a_client_still_connected(tmp_path):
    """`down` ends PostgreSQL by fast shutdown: a client left connected (a router's pool) is
    disconnected and the server shuts down cleanly, not killed when `down` gives up."""
    import shutil

    import sqlalchemy

    from datacreek_assets.local_services import PostgresService

    service = PostgresService(LocalSettings(state_dir=tmp_path / "state", postgres_port=25433))
    service.up(120, progress=lambda msg: None)
    engine = sqlalchemy.create_engine(service.url())
    try:
        connection = engine.connect()
        connection.execute(sqlalchemy.text("SELECT 1"))
        assert service.down(lambda msg: None, timeout=30.0)
        assert service.our_pid() is None
        log = service.log_file.read_text()
        assert "fast shutdown request" in log and "database system is shut down" in log, log[-2000:]
        with pytest.raises(sqlalchemy.exc.OperationalError):
            connection.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()
        service.down(lambda msg: None)
        shutil.rmtree(service.data_dir, ignore_errors=True)  # outside tmp_path when run as root
